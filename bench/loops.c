/* The C baselines of bench/run.py: the same system calls as the Python cases, in
 * a plain C loop, the way a C program would make them.
 *
 *   loops sndrcv ITER SIZE          msgsnd + msgrcv of one SIZE-byte message, ITER times
 *   loops batch  REPS COUNT SIZE    COUNT msgsnd, then COUNT msgrcv; REPS times
 *   loops peek   REPS COUNT SIZE BUF  MSG_COPY of each of COUNT queued messages, into a
 *                                    BUF-byte buffer; REPS times
 *   loops sem    ITER               semop -1 then +1 with SEM_UNDO, ITER times
 *
 * Each mode makes its own private queue or set, checks the result of every call
 * (any failure: a message on stderr, the object removed, exit status 1), and
 * prints one line: the thread CPU time of the timed loop in nanoseconds, divided
 * by its unit (a pair, a message, a whole queue, a pair). */

#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>

#ifndef MSG_COPY
#define MSG_COPY 040000
#endif

/* A receive buffer as large as the biggest message the kernel allows (msgmax);
 * its size is what the benchmark reports. */
#define RECV_SIZE 8192

/* semctl's fourth argument; the caller defines it (semctl(2)). */
union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

struct msgbuf_any {
    long mtype;
    char mtext[RECV_SIZE];
};

static int queue = -1;
static int semset = -1;

static void fail(const char *what)
{
    int err = errno;
    fprintf(stderr, "loops: %s: %s\n", what, strerror(err));
    if (queue >= 0)
        msgctl(queue, IPC_RMID, NULL);
    if (semset >= 0)
        semctl(semset, 0, IPC_RMID);
    exit(1);
}

static long long now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts))
        fail("clock_gettime");
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long number(const char *s)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v <= 0 || v > 100000000) {
        fprintf(stderr, "loops: bad number %s\n", s);
        exit(2);
    }
    return v;
}

static size_t msg_size(const char *s)
{
    long v = number(s);
    if (v > RECV_SIZE) {
        fprintf(stderr, "loops: message size %ld above %d\n", v, RECV_SIZE);
        exit(2);
    }
    return (size_t)v;
}

/* A private queue that can hold `count` messages of `size` bytes at once, so that
 * no msgsnd of the loops ever waits for room. */
static void make_queue(long count, size_t size)
{
    struct msqid_ds ds;
    queue = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (queue < 0)
        fail("msgget");
    if (msgctl(queue, IPC_STAT, &ds))
        fail("msgctl(IPC_STAT)");
    if ((unsigned long)count * size > ds.msg_qbytes) {
        errno = ENOSPC;
        fprintf(stderr, "loops: %ld messages of %zu bytes exceed the queue's %lu bytes "
                        "(raise /proc/sys/kernel/msgmnb)\n", count, size,
                (unsigned long)ds.msg_qbytes);
        fail("make_queue");
    }
}

static void send_one(struct msgbuf_any *m, size_t size)
{
    if (msgsnd(queue, m, size, 0))
        fail("msgsnd");
}

static void receive_one(struct msgbuf_any *m, size_t size)
{
    ssize_t got = msgrcv(queue, m, RECV_SIZE, 0, 0);
    if (got < 0)
        fail("msgrcv");
    if ((size_t)got != size || m->mtype != 1) {
        errno = EPROTO;
        fail("msgrcv returned the wrong message");
    }
}

static void sndrcv(long iter, size_t size, struct msgbuf_any *m)
{
    long i;
    for (i = 0; i < iter; i++) {
        m->mtype = 1;
        send_one(m, size);
        receive_one(m, size);
    }
}

static void batch(long reps, long count, size_t size, struct msgbuf_any *m)
{
    long r, i;
    for (r = 0; r < reps; r++) {
        m->mtype = 1;
        for (i = 0; i < count; i++)
            send_one(m, size);
        for (i = 0; i < count; i++)
            receive_one(m, size);
    }
}

/* The kernel allocates a copy as large as the buffer (up to msgmax) for each
 * MSG_COPY, so the buffer size shows in the time. */
static void peek(long reps, long count, size_t size, size_t buf, struct msgbuf_any *m)
{
    long r, i;
    for (r = 0; r < reps; r++) {
        for (i = 0; i < count; i++) {
            ssize_t got = msgrcv(queue, m, buf, i, MSG_COPY | IPC_NOWAIT);
            if (got < 0)
                fail("msgrcv(MSG_COPY)");
            if ((size_t)got != size) {
                errno = EPROTO;
                fail("msgrcv(MSG_COPY) returned the wrong message");
            }
        }
    }
}

static void sem(long iter)
{
    struct sembuf take = {0, -1, SEM_UNDO}, give = {0, 1, SEM_UNDO};
    long i;
    for (i = 0; i < iter; i++) {
        if (semop(semset, &take, 1))
            fail("semop -1");
        if (semop(semset, &give, 1))
            fail("semop +1");
    }
}

int main(int argc, char **argv)
{
    static struct msgbuf_any m;
    long long start, end;
    double unit;

    if (argc == 4 && !strcmp(argv[1], "sndrcv")) {
        long iter = number(argv[2]);
        size_t size = msg_size(argv[3]);
        make_queue(1, size);
        memset(m.mtext, 'x', size);
        sndrcv(iter / 10 + 1, size, &m);  /* warm up */
        start = now_ns();
        sndrcv(iter, size, &m);
        end = now_ns();
        unit = (double)iter;
    } else if (argc == 5 && !strcmp(argv[1], "batch")) {
        long reps = number(argv[2]), count = number(argv[3]);
        size_t size = msg_size(argv[4]);
        make_queue(count, size);
        memset(m.mtext, 'x', size);
        batch(1, count, size, &m);
        start = now_ns();
        batch(reps, count, size, &m);
        end = now_ns();
        unit = (double)reps * (double)count;
    } else if (argc == 6 && !strcmp(argv[1], "peek")) {
        long reps = number(argv[2]), count = number(argv[3]), i;
        size_t size = msg_size(argv[4]), buf = msg_size(argv[5]);
        make_queue(count, size);
        memset(m.mtext, 'x', size);
        for (i = 0; i < count; i++) {
            m.mtype = 1;
            send_one(&m, size);
        }
        peek(1, count, size, buf, &m);
        start = now_ns();
        peek(reps, count, size, buf, &m);
        end = now_ns();
        unit = (double)reps;
    } else if (argc == 3 && !strcmp(argv[1], "sem")) {
        long iter = number(argv[2]);
        unsigned short one[1] = {1};
        union semun arg;
        arg.array = one;
        semset = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
        if (semset < 0)
            fail("semget");
        if (semctl(semset, 0, SETALL, arg))
            fail("semctl(SETALL)");
        sem(iter / 10 + 1);
        start = now_ns();
        sem(iter);
        end = now_ns();
        unit = (double)iter;
    } else {
        fprintf(stderr, "usage: loops sndrcv ITER SIZE | batch REPS COUNT SIZE | "
                        "peek REPS COUNT SIZE BUF | sem ITER\n");
        return 2;
    }
    if (queue >= 0 && msgctl(queue, IPC_RMID, NULL))
        fail("msgctl(IPC_RMID)");
    if (semset >= 0 && semctl(semset, 0, IPC_RMID))
        fail("semctl(IPC_RMID)");
    printf("%.1f\n", (double)(end - start) / unit);
    return 0;
}
