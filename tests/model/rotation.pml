/*
 * rotation.pml: a Promela model of atrest's rotation protocol (docs/DESIGN.md sections 3 and 4),
 * checked exhaustively by spin (tests/model/run.sh, `make model`). docs/MODEL.md says what it
 * covers, what it abstracts and which DESIGN step each action stands for.
 *
 * One resource, one rotation from key A to key B:
 *   from    = writes A, reads A         (CFG_FROM)
 *   stage   = writes A, reads A and B   (CFG_STAGE)
 *   promote = writes B, reads A and B   (CFG_PROM; reencrypt and verify run the same config)
 *   prune   = writes B, reads B         (CFG_TO = to)
 *
 * Processes: three agents (member and, when elected, leader, in one process as in the code),
 * and an environment (three API servers that reload late and write at any time, and lease
 * expiry). etcd is the global state below; every etcd request is one atomic step.
 *
 * Mutations (each must make spin find a violation; run.sh checks which):
 *   MUT_A  the leader promotes without waiting for every member's stage ack   (S1)
 *   MUT_B  the leader prunes without the verify scan                          (S2)
 *   MUT_C  a transition without the leader guard (term compare)               (S7)
 *   MUT_D  the leader writes the next phase config before the record names it (S8)
 *   MUT_E  a member acks without the proof of load (its API server's reload)  (S1)
 */

#define N 3    /* agents = members = API servers */
#ifndef NOBJ
#define NOBJ 1 /* stored objects of the resource (1 or 2) */
#endif
#ifndef MAXCRASH
#define MAXCRASH 1 /* agent crashes (and restarts) in one run */
#endif
#ifndef MAXEXP
#define MAXEXP 1 /* lease expiries of a live agent (it does not notice at once) */
#endif
#define MAXFAIL 1 /* re-encrypt writes that fail and are counted, not retried */

/* keys */
#define KA 0
#define KB 1

/* configs */
#define CFG_FROM 0
#define CFG_STAGE 1
#define CFG_PROM 2
#define CFG_TO 3

/* phases: the record's index */
#define STAGE 0
#define PROMOTE 1
#define REENC 2
#define VERIFY 3
#define PRUNE 4

#define readable(c, k) ((c) == CFG_STAGE || (c) == CFG_PROM || ((c) == CFG_FROM && (k) == KA) || ((c) == CFG_TO && (k) == KB))
#define wkey(c) ((c) >= CFG_PROM -> KB : KA)
/* the phase config at an index (coord/phase.h: ar_plan_derive) */
#define cfg_of(i) ((i) == STAGE -> CFG_STAGE : ((i) == PRUNE -> CFG_TO : CFG_PROM))

/* ---- etcd ---- */
bool rec_exists;      /* /atrest/rotation */
byte rec_idx;         /* its "index" */
byte rec_rev;         /* its mod_revision (abstract: counts writes of the key) */
byte ack[N];          /* acks/<id>/<index>/<node>: bit <index> per node */
bool leader_exists;   /* /atrest/leader */
byte leader_node;
byte leader_term;     /* its create_revision */
byte terms;           /* create_revisions handed out so far */
bool lease_ok[N];     /* each agent's session lease */
byte obj[NOBJ];       /* the key each stored object is encrypted under */
byte rd[NOBJ];        /* bit n: agent n read the object and no write happened since (mod_revision) */
bool finished;            /* history/<id> written: the rotation finished */

/* ---- each node's files (survive a crash) ---- */
byte eff[N];          /* the effective config */
bool saved[N];        /* <stateDir>/rotation/<id>/{from,to}.yaml */

/* ---- each API server ---- */
byte lc[N];           /* the config it has loaded (late: reloads when the environment says) */

/* ---- each agent's memory (lost in a crash) ---- */
byte mst[N];          /* member: M_IDLE, M_READ (read the record), M_WROTE, M_ACKED */
byte vidx[N];         /* member: the index it read */
byte mterm[N];        /* the term it believes it leads in; 0 = not leader */
byte lst[N];          /* leader: L_NONE, L_VIEW, L_READOBJ, L_VERIFIED */
byte lidx[N];         /* leader: the record as read: index */
byte lrev[N];         /* leader: the record as read: mod_revision */
byte lcur[N];         /* leader: the re-encrypt pass's cursor */

/* ---- fault budgets ---- */
byte crashes;
byte expiries;
byte fails;

/* ---- ghosts for the properties ---- */
byte named;           /* bit i: the record has named phase i (S8) */
byte trans_revs;      /* bit r: a transition was made from record revision r (S7) */

#define M_IDLE 0
#define M_READ 1
#define M_WROTE 2
#define M_ACKED 3

#define L_NONE 0
#define L_VIEW 1
#define L_READOBJ 2
#define L_VERIFIED 3

#define bit(i) (1 << (i))

/* Per object, unrolled for NOBJ 1 or 2: config c reads every stored object (S2); no object
 * is under the dropped key A (the verify scan); forget agent n's reads. */
#if NOBJ == 2
#define READS_ALL_OBJ(c) (readable(c, obj[0]) && readable(c, obj[1]))
#define NONE_UNDER_A (obj[0] == KB && obj[1] == KB)
#define FORGET_READS(n) rd[0] = rd[0] & ~bit(n); rd[1] = rd[1] & ~bit(n)
#else
#define READS_ALL_OBJ(c) readable(c, obj[0])
#define NONE_UNDER_A (obj[0] == KB)
#define FORGET_READS(n) rd[0] = rd[0] & ~bit(n)
#endif
/* Every key each API server writes with is read by every loaded config. */
#define READ_BY_ALL(k) (readable(lc[0], k) && readable(lc[1], k) && readable(lc[2], k))
#define all_acked(i) ((ack[0] & bit(i)) && (ack[1] & bit(i)) && (ack[2] & bit(i)))
#define all_from (eff[0] == CFG_FROM && eff[1] == CFG_FROM && eff[2] == CFG_FROM)

/* The leader guard: create_revision(leader) == term, mod_revision(rotation) == as read (S7). */
#ifdef MUT_C
#define TERM_OK(n) true
#else
#define TERM_OK(n) (leader_exists && leader_term == mterm[n])
#endif
#define GUARD(n) (TERM_OK(n) && rec_rev == lrev[n])

/* What a guarded transition asserts (S7): its maker holds the leader key in the term it
 * believes, and no transition was made from this record revision before. */
inline s7_transition(n)
{
	assert(leader_exists && leader_node == n && leader_term == mterm[n]); /* S7 */
	assert((trans_revs & bit(rec_rev)) == 0); /* S7 */
	trans_revs = trans_revs | bit(rec_rev)
}

/* The leader may advance index i when every member acked it (leader step 2). */
#ifdef MUT_A
#define ACKS_OK(n, i) ((i) == STAGE -> (ack[n] & bit(i)) : all_acked(i))
#else
#define ACKS_OK(n, i) all_acked(i)
#endif

/* The phase's own work is finished (leader step 2). */
#ifdef MUT_B
#define WORK_DONE(n) (lidx[n] == REENC -> (lst[n] == L_VIEW && lcur[n] == NOBJ) : (lst[n] == L_VIEW || lst[n] == L_VERIFIED))
#else
#define WORK_DONE(n) (lidx[n] == REENC -> (lst[n] == L_VIEW && lcur[n] == NOBJ) : (lidx[n] == VERIFY -> lst[n] == L_VERIFIED : lst[n] == L_VIEW))
#endif

/* Proof of load (4.5): the local API server runs the config the member wrote. */
#ifdef MUT_E
#define PROVED(n) true
#else
#define PROVED(n) (lc[n] == eff[n])
#endif

inline lose_leadership(n)
{
	mterm[n] = 0;
	lst[n] = L_NONE;
	lidx[n] = 0;
	lrev[n] = 0;
	lcur[n] = 0;
	FORGET_READS(n)
}

proctype Agent(byte n)
{
end:
	do
	/* ---------------- every member (4.4 "Every member") ---------------- */
	:: atomic {
		/* member steps 1 and 2: read the record (a rotation not yet handled by this process, or
		 * a new index); on a rotation not seen before, save from and to, but only while the
		 * effective config is the record's from (else wait); derive the phase config at index
		 * (its hash equals the record's: the same pure function on the same files) */
		rec_exists && (saved[n] || eff[n] == CFG_FROM) &&
		(mst[n] == M_IDLE || (mst[n] == M_ACKED && rec_idx != vidx[n])) ->
		saved[n] = true;
		vidx[n] = rec_idx;
		mst[n] = M_READ
	}
	:: atomic {
		/* member step 3a: write the phase config as the effective config */
		mst[n] == M_READ ->
		assert(named & bit(vidx[n])); /* S8: the record named this phase before */
		eff[n] = cfg_of(vidx[n]);
		mst[n] = M_WROTE
	}
	:: atomic {
		/* member step 3b: prove that the API server loaded it, put the ack */
		mst[n] == M_WROTE && PROVED(n) ->
		ack[n] = ack[n] | bit(vidx[n]);
		mst[n] = M_ACKED
	}
	/* ---------------- session and election ---------------- */
	:: atomic {
		/* the session notices its lease is gone: leadership goes with it; a new lease */
		!lease_ok[n] -> lose_leadership(n); lease_ok[n] = true
	}
	:: atomic {
		/* campaign: create the leader key on our lease; its create_revision is the term */
		lease_ok[n] && !leader_exists && mterm[n] == 0 ->
		terms++;
		leader_exists = true;
		leader_node = n;
		leader_term = terms;
		mterm[n] = terms;
		lst[n] = L_NONE
	}
	:: atomic {
		/* the election watch sees the leader key gone or another term */
		mterm[n] != 0 && !(leader_exists && leader_term == mterm[n]) -> lose_leadership(n)
	}
	/* ---------------- the leader (4.4 "Leader") ---------------- */
	:: atomic {
		/* leader step 1: no rotation, agreement holds: create the record (guarded) */
		mterm[n] != 0 && !rec_exists && all_from ->
		if
		:: TERM_OK(n) ->
			s7_transition(n);
			rec_exists = true;
			rec_idx = STAGE;
			rec_rev++;
			named = named | bit(STAGE);
			lst[n] = L_NONE
		:: else -> lose_leadership(n)
		fi
	}
	:: atomic {
		/* leader: read the record (on every change of it; a stale view is allowed too) */
		mterm[n] != 0 && rec_exists && (lst[n] == L_NONE || lrev[n] != rec_rev) ->
		lidx[n] = rec_idx;
		lrev[n] = rec_rev;
		lcur[n] = 0;
		FORGET_READS(n);
		lst[n] = L_VIEW
	}
	:: atomic {
		/* re-encrypt pass (4.6): read the object at the cursor; skip it if already under W_to */
		mterm[n] != 0 && lst[n] == L_VIEW && lidx[n] == REENC && lcur[n] < NOBJ ->
		if
		:: obj[lcur[n]] == KB -> lcur[n]++
		:: else -> rd[lcur[n]] = rd[lcur[n]] | bit(n); lst[n] = L_READOBJ
		fi
	}
	:: atomic {
		/* re-encrypt pass: write it back under W_to, compare on its mod_revision (S6); a failed
		 * compare is a conflict: skip (an API server rewrote it) */
		lst[n] == L_READOBJ ->
		if
		:: (rd[lcur[n]] & bit(n)) ->
			assert(READ_BY_ALL(KB)); /* S1 for the leader's write (and S2 for this object) */
			obj[lcur[n]] = KB;
			rd[lcur[n]] = 0
		:: else -> skip
		fi;
		lcur[n]++;
		lst[n] = L_VIEW
	}
	:: atomic {
		/* re-encrypt pass: the write fails (a timeout, a value too large): counted, not retried */
		lst[n] == L_READOBJ && fails < MAXFAIL ->
		fails++;
		rd[lcur[n]] = rd[lcur[n]] & ~bit(n);
		lcur[n]++;
		lst[n] = L_VIEW
	}
	:: atomic {
		/* verify scan (4.6) at one revision: zero objects under the dropped key A, else wait */
		mterm[n] != 0 && lst[n] == L_VIEW && lidx[n] == VERIFY && NONE_UNDER_A ->
		lst[n] = L_VERIFIED
	}
	:: atomic {
		/* leader step 2: every member acked index i and the phase's work is finished: advance
		 * (or, after prune, write history and delete the record and the acks), guarded */
		mterm[n] != 0 && lst[n] != L_NONE && lst[n] != L_READOBJ && WORK_DONE(n) && ACKS_OK(n, lidx[n]) ->
#ifdef MUT_D
		/* mutation D: the leader runs the next phase config on its own node, then records it */
		if
		:: lidx[n] < PRUNE ->
			assert(named & bit(lidx[n] + 1)); /* S8: the record named this phase before */
			eff[n] = cfg_of(lidx[n] + 1)
		:: else -> skip
		fi;
#endif
		if
		:: GUARD(n) ->
			s7_transition(n);
			if
			:: lidx[n] == PRUNE ->
				rec_exists = false;
				ack[0] = 0;
				ack[1] = 0;
				ack[2] = 0;
				finished = true
			:: else ->
				rec_idx = lidx[n] + 1;
				named = named | bit(rec_idx)
			fi;
			rec_rev++;
			lst[n] = L_NONE;
			lidx[n] = 0;
			lrev[n] = 0;
			lcur[n] = 0
		:: else -> lose_leadership(n)
		fi
	}
	/* ---------------- the rotation is over and this node runs to: the agent idles ---------------- */
	:: finished && eff[n] == CFG_TO && mst[n] != M_READ && mst[n] != M_WROTE -> break
	/* ---------------- a crash, at any step; systemd restarts the agent ---------------- */
	:: atomic {
		crashes < MAXCRASH ->
		crashes++;
		mst[n] = M_IDLE;
		vidx[n] = 0;
		lose_leadership(n);
		/* the dead process's lease is gone for the cluster (expired); the restart opens a new one */
		lease_ok[n] = false;
		if
		:: leader_exists && leader_node == n -> leader_exists = false
		:: else -> skip
		fi
	}
	od
}

/* An API server reloads its file, at any time after its agent wrote it (slow reload). */
inline reload(s)
{
	atomic {
		lc[s] != eff[s] ->
		assert(READS_ALL_OBJ(eff[s])); /* S2 */
		lc[s] = eff[s]
	}
}

/* An API server writes (creates or updates) an object with its loaded write key. */
inline api_write(s, o)
{
	atomic {
		/* (a write that changes nothing the model sees is left out: same key, no reader) */
		obj[o] != wkey(lc[s]) || rd[o] != 0 ->
		/* S1: every other live API server can read what it writes */
		assert(READ_BY_ALL(wkey(lc[s]))); /* S1 (and so S2 for this object) */
		obj[o] = wkey(lc[s]);
		rd[o] = 0
	}
}

/* A lease expires while its agent runs on (SIGSTOP, a partition): the keys on it go. */
inline expire(s)
{
	atomic {
		expiries < MAXEXP && lease_ok[s] ->
		expiries++;
		lease_ok[s] = false;
		if
		:: leader_exists && leader_node == s -> leader_exists = false
		:: else -> skip
		fi
	}
}

/* The API servers and the lease clock. */
proctype Env()
{
end:
	do
	:: reload(0)
	:: reload(1)
	:: reload(2)
	:: api_write(0, 0)
	:: api_write(1, 0)
	:: api_write(2, 0)
#if NOBJ == 2
	:: api_write(0, 1)
	:: api_write(1, 1)
	:: api_write(2, 1)
#endif
	:: expire(0)
	:: expire(1)
	:: expire(2)
	od
}

init
{
	byte i;
	atomic {
		for (i : 0 .. N - 1) {
			eff[i] = CFG_FROM;
			lc[i] = CFG_FROM;
			lease_ok[i] = true
		}
		for (i : 0 .. NOBJ - 1) {
			obj[i] = KA
		}
		run Env();
		run Agent(0);
		run Agent(1);
		run Agent(2)
	}
}
