/* The shim's own functions that ipcbind._accel calls, as a table of pointers.
 *
 * The accelerator is a separate extension module: it never links a copy of the
 * shim, whose per-thread receive buffers and SEM_UNDO ledger must exist once per
 * process. The shim hands out the table's address (ipcb_calls(), reached through
 * cffi); ipcbind._seam passes that address to the accelerator once, at import.
 * size lets the accelerator refuse a table from a shim built with another layout. */
#ifndef IPCB_CALLS_H
#define IPCB_CALLS_H

#include <stddef.h>
#include <sys/types.h>

/* maxsize meaning "whatever size the message has". */
#define IPCB_ANY_SIZE ((size_t)-1)

struct ipcb_rmsg {
    unsigned char lent; /* set when returned; the caller clears it once it has copied */
    int err;       /* 0, or the errno of a failed call (then len is -1) */
    ssize_t len;
    long mtype;    /* mtype and mtext are the struct msgbuf the kernel fills */
    char mtext[];
};

struct ipcb_calls_table {
    size_t size;
    int (*msgsnd)(int msqid, long mtype, const char *data, size_t len, int flags,
                  long long timeout_ns);
    struct ipcb_rmsg *(*msgrcv)(int msqid, size_t maxsize, long msgtyp, int flags,
                                long long timeout_ns);
    int (*semop1)(int semid, unsigned short num, short op, short flg, long long timeout_ns);
};

#endif
