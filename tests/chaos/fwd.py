"""A tiny TCP forwarder for the chaos run: fwd.py LISTEN_HOST:PORT TARGET_HOST:PORT.

The chaos run starts one inside an agent's network namespace (127.0.0.1:<simulator port>
there -> the host side of a veth pair) and one in the root namespace (that veth address ->
the simulator on 127.0.0.1), so the agent reaches its API server by its usual URL and TLS
name while its etcd traffic goes over another veth pair that the run can cut. Prints
"fwd ready" once listening; SIGTERM/SIGKILL end it. Bytes are copied as they are (TLS end to
end), one thread pair per connection, at most 64 connections at a time."""
import socket
import sys
import threading

MAX_CONNS = 64


def pipe(src, dst, done):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        done.release()


def serve(conn, target, slots):
    try:
        up = socket.create_connection(target, timeout=5)
        up.settimeout(None)
    except OSError:
        conn.close()
        slots.release()
        return
    done = threading.Semaphore(0)
    for a, b in ((conn, up), (up, conn)):
        threading.Thread(target=pipe, args=(a, b, done), daemon=True).start()
    done.acquire()
    done.acquire()
    conn.close()
    up.close()
    slots.release()


def main():
    lh, lp = sys.argv[1].rsplit(":", 1)
    th, tp = sys.argv[2].rsplit(":", 1)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lh, int(lp)))
    ls.listen(16)
    print("fwd ready", flush=True)
    slots = threading.Semaphore(MAX_CONNS)
    while True:
        conn, _ = ls.accept()
        if not slots.acquire(timeout=10):
            conn.close()
            continue
        threading.Thread(target=serve, args=(conn, (th, int(tp)), slots), daemon=True).start()


if __name__ == "__main__":
    main()
