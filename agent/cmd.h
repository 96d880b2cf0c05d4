/*
 * agent/cmd.h: the subcommands of the atrest binary. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns the process exit code.
 */
#ifndef ATREST_AGENT_CMD_H
#define ATREST_AGENT_CMD_H

/* agent/cli_crypto.c */
int ar_cmd_lint(int argc, char **argv);
int ar_cmd_encrypt(int argc, char **argv);
int ar_cmd_decrypt(int argc, char **argv);
int ar_cmd_genkey(int argc, char **argv);

/* agent/daemon.c */
int ar_cmd_agent(int argc, char **argv);

/* agent/cli_plan.c */
int ar_cmd_plan(int argc, char **argv);

/* agent/cli_status.c */
int ar_cmd_status(int argc, char **argv);

/* agent/cli_verify.c */
int ar_cmd_verify(int argc, char **argv);

/* agent/cli_reencrypt.c */
int ar_cmd_reencrypt(int argc, char **argv);
/* agent/cli_proof.c (hidden: a troubleshooting tool) */
int ar_cmd_proof(int argc, char **argv);
/* agent/cli_rotation.c */
int ar_cmd_member(int argc, char **argv);
int ar_cmd_rotation(int argc, char **argv);

#endif
