/* ipcbind shim: small, non-variadic wrappers around the System V IPC calls.
 *
 * Every IPC wrapper hands its errno back itself, never in errno alone: by the time
 * Python could read ffi.errno, a signal handler may have run and made calls of its
 * own. A call with a result of its own returns -errno on failure (its successes
 * are never negative); one without returns its errno (0: success); the others
 * carry it in what they return or in an out-parameter. The wrappers never touch
 * Python objects, so cffi can release the GIL around all of them.
 * Buffers for messages belong to the calling thread and are reused between calls.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include "calls.h"

/* glibc defines these only with _GNU_SOURCE, or not at all when it is old. */
#ifndef MSG_EXCEPT
#define MSG_EXCEPT 020000
#endif
#ifndef MSG_COPY
#define MSG_COPY 040000
#endif
#ifndef MSG_STAT_ANY
#define MSG_STAT_ANY 13
#endif
#ifndef SEM_STAT_ANY
#define SEM_STAT_ANY 20
#endif
#ifndef SHM_STAT_ANY
#define SHM_STAT_ANY 15
#endif
#ifndef SHM_EXEC
#define SHM_EXEC 0100000
#endif
#ifndef SHM_NORESERVE
#define SHM_NORESERVE 010000
#endif
#ifndef CLONE_NEWIPC
#define CLONE_NEWIPC 0x08000000
#endif
#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

/* Bytes of text in a receive slot's fixed buffer; see ipcb_recv_packed. */
#define IPCB_FIRST_RCAP 8192
#define IPCB_RECV_RARE (-4096LL)
#define IPCB_RECV_NOWAIT (1ULL << 31)
#define IPCB_PACK_SHIFT 32

/* semctl's fourth argument; the caller must define it (semctl(2)). */
union ipcb_semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

struct ipcb_batch {
    int lent;      /* as in ipcb_rmsg */
    size_t count;
    size_t used;
    long *mtypes;
    size_t *ends;  /* end offset of message i in text */
    char *text;
    int err;       /* errno that ended the batch early, 0 if none */
    int changed;   /* copy_all: the queue changed while it was read */
    size_t cap;
    size_t text_cap;
};

/* ---- per-thread buffers ------------------------------------------------
 * A received message stays in the thread's buffer until the caller has copied it
 * out, and between the two a Python signal handler may run on the same thread and
 * receive too. So a buffer handed out is marked lent until the caller clears the
 * mark, and a call that finds it lent takes another slot, adding one if needed:
 * handlers can nest as deep as Python's recursion allows. Besides those, a slot
 * stays lent only when an exception interrupted its caller before it copied; past
 * IPCB_MAX_SLOTS such slots (a thousand exceptions in that window) are taken back. */

#define IPCB_MAX_SLOTS 1024

/* A receive slot has two buffers: m, with IPCB_FIRST_RCAP bytes of text, taken
 * once from the arena below (or from malloc when the arena is full) and never
 * moved while its thread lives, and big, grown as longer messages need. A slot
 * is lent while either is. */
struct rslot {
    struct ipcb_rmsg *m;
    struct ipcb_rmsg *big;
    size_t bigcap;          /* bytes of big's mtext */
};

struct ipcb_tls {
    struct rslot *r;
    size_t nr;
    struct ipcb_batch **b;
    size_t nb;
    char *sbuf;             /* a long mtype followed by the text */
    size_t scap;
};

/* ---- the arena of fixed receive buffers -----------------------------------
 * One region of address space, reserved once per process, holds the fixed
 * buffers of every thread's receive slots in chunks of IPCB_CHUNK bytes, so
 * that Python reads any of them through one view of the whole region, by
 * offset (see ipcb_recv_packed), without looking up anything per thread. Pages
 * are only backed by memory once used. A thread's chunks are given back when it
 * exits; a slot that finds the arena full (or unavailable) takes its buffer
 * from malloc, and its messages take ipcb_recv_packed's slower result. */

#define IPCB_CHUNK 16384   /* a power of two holding a struct ipcb_rmsg and its text */
#define IPCB_CHUNKS 1024

_Static_assert(sizeof(struct ipcb_rmsg) + IPCB_FIRST_RCAP <= IPCB_CHUNK,
               "a chunk holds a fixed buffer");

static char *arena;
static size_t arena_used;       /* chunks ever handed out */
static size_t arena_free[IPCB_CHUNKS];
static size_t arena_nfree;      /* chunks given back, in arena_free */
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_prefork(void) { pthread_mutex_lock(&arena_lock); }
static void arena_parent(void) { pthread_mutex_unlock(&arena_lock); }
static void arena_child(void) { pthread_mutex_init(&arena_lock, NULL); }

static void arena_init(void)
{
    void *p = mmap(NULL, (size_t)IPCB_CHUNK * IPCB_CHUNKS, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED)
        arena = p;
    pthread_atfork(arena_prefork, arena_parent, arena_child);
}

/* The arena's start (NULL: none) and its size in bytes. */
char *ipcb_arena(size_t *size)
{
    pthread_once(&arena_once, arena_init);
    *size = arena ? (size_t)IPCB_CHUNK * IPCB_CHUNKS : 0;
    return arena;
}

static int in_arena(const void *p)
{
    return arena && (const char *)p >= arena &&
           (const char *)p < arena + (size_t)IPCB_CHUNK * IPCB_CHUNKS;
}

/* A chunk of the arena, or NULL when it is full or unavailable. */
static void *arena_take(void)
{
    char *p = NULL;
    pthread_once(&arena_once, arena_init);
    if (!arena)
        return NULL;
    pthread_mutex_lock(&arena_lock);
    if (arena_nfree)
        p = arena + arena_free[--arena_nfree] * IPCB_CHUNK;
    else if (arena_used < IPCB_CHUNKS)
        p = arena + arena_used++ * IPCB_CHUNK;
    pthread_mutex_unlock(&arena_lock);
    return p;
}

static void fixed_free(void *p)
{
    if (!in_arena(p)) {
        free(p);
        return;
    }
    pthread_mutex_lock(&arena_lock);
    arena_free[arena_nfree++] = (size_t)((char *)p - arena) / IPCB_CHUNK;
    pthread_mutex_unlock(&arena_lock);
}

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static __thread struct ipcb_tls *tls_cur;

/* Large batch buffers are given back at the next batch instead of kept. */
#define IPCB_KEEP_BYTES (1u << 20)

static void tls_free(void *p)
{
    struct ipcb_tls *t = p;
    size_t i;
    for (i = 0; i < t->nr; i++) {
        if (t->r[i].m)
            fixed_free(t->r[i].m);
        free(t->r[i].big);
    }
    for (i = 0; i < t->nb; i++) {
        if (t->b[i]) {
            free(t->b[i]->mtypes);
            free(t->b[i]->ends);
            free(t->b[i]->text);
            free(t->b[i]);
        }
    }
    free(t->r);
    free(t->b);
    free(t->sbuf);
    free(t);
}

static void tls_init(void)
{
    pthread_key_create(&tls_key, tls_free);
}

static struct ipcb_tls *tls(void)
{
    struct ipcb_tls *t = tls_cur;
    if (t)
        return t;
    pthread_once(&tls_once, tls_init);
    t = calloc(1, sizeof *t);
    if (!t || pthread_setspecific(tls_key, t)) {
        free(t);
        errno = ENOMEM;
        return NULL;
    }
    tls_cur = t;
    return t;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem, size_t header)
{
    size_t n = *cap ? *cap : 16;
    void *q;
    if (need <= *cap && *p)
        return 0;
    while (n < need) {
        if (n > (SIZE_MAX - header) / 2 / elem) {
            n = need;
            break;
        }
        n *= 2;
    }
    if (n > (SIZE_MAX - header) / elem) {
        errno = ENOMEM;
        return -1;
    }
    q = realloc(*p, header + n * elem);
    if (!q) {
        errno = ENOMEM;
        return -1;
    }
    *p = q;
    *cap = n;
    return 0;
}

/* Adds zeroed slots to an array of n of size elem (doubling); 0 or -1 (ENOMEM). */
static int more_slots(void **array, size_t *n, size_t elem)
{
    size_t m = *n ? *n * 2 : 1;
    char *p = realloc(*array, m * elem);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    memset(p + *n * elem, 0, (m - *n) * elem);
    *array = p;
    *n = m;
    return 0;
}

static int rslot_lent(const struct rslot *s)
{
    return (s->m && s->m->lent) || (s->big && s->big->lent);
}

/* A receive slot not lent, or NULL (ENOMEM). */
static struct rslot *take_rslot(struct ipcb_tls *t)
{
    size_t i, n = t->nr;
    for (i = 0; i < n; i++)
        if (!rslot_lent(&t->r[i]))
            return &t->r[i];
    if (n >= IPCB_MAX_SLOTS) {
        for (i = 0; i < n; i++) {
            if (t->r[i].m)
                t->r[i].m->lent = 0;
            if (t->r[i].big)
                t->r[i].big->lent = 0;
        }
        return &t->r[0];
    }
    if (more_slots((void **)&t->r, &t->nr, sizeof *t->r))
        return NULL;
    return &t->r[n];
}

/* The slot's fixed buffer, allocated at first use; NULL (ENOMEM). */
static struct ipcb_rmsg *rslot_fixed(struct rslot *s)
{
    if (!s->m) {
        s->m = arena_take();
        if (!s->m)
            s->m = malloc(sizeof(struct ipcb_rmsg) + IPCB_FIRST_RCAP);
        if (!s->m) {
            errno = ENOMEM;
            return NULL;
        }
        s->m->lent = 0;
    }
    return s->m;
}

/* The slot's large buffer with room for need bytes of text; NULL (ENOMEM). */
static struct ipcb_rmsg *rslot_big(struct rslot *s, size_t need)
{
    int fresh = !s->big;
    if (grow((void **)&s->big, &s->bigcap, need, 1, sizeof(struct ipcb_rmsg)))
        return NULL;
    if (fresh)
        s->big->lent = 0;
    return s->big;
}

/* ---- timeouts ------------------------------------------------------------
 * msgsnd and msgrcv have no timeout. A POSIX timer aimed at the calling thread
 * sends it a signal whose handler does nothing and which is installed without
 * SA_RESTART, so the blocked call returns EINTR; a message is never half taken.
 * The timer fires again every IPCB_REFIRE_NS after the deadline: a signal that
 * lands just before the thread enters the call cannot leave it asleep. */

#define IPCB_REFIRE_NS 2000000L

static int wake_sig = -1;
static pthread_once_t wake_once = PTHREAD_ONCE_INIT;

static void wake_handler(int sig)
{
    (void)sig;
}

/* Whether a timer aimed at this thread can send signal s: some emulators (qemu-user)
 * refuse the highest real-time signals. */
static int timer_takes(int s)
{
    struct sigevent sev;
    timer_t t;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = s;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, &t))
        return 0;
    timer_delete(t);
    return 1;
}

static void wake_init(void)
{
    int s;
    for (s = SIGRTMAX; s >= SIGRTMIN; s--) {
        struct sigaction old, sa;
        if (sigaction(s, NULL, &old))
            continue;
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL || !timer_takes(s))
            continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = wake_handler;
        sigemptyset(&sa.sa_mask);
        if (sigaction(s, &sa, NULL) == 0) {
            wake_sig = s;
            return;
        }
    }
}

int ipcb_wake_signal(void)
{
    pthread_once(&wake_once, wake_init);
    return wake_sig;
}

struct deadline {
    timer_t timer;
    struct timespec end;
};

static void ts_add_ns(struct timespec *ts, long long ns)
{
    ts->tv_sec += ns / 1000000000LL;
    ts->tv_nsec += ns % 1000000000LL;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int deadline_start(struct deadline *d, long long ns)
{
    struct sigevent sev;
    struct itimerspec its;
    if (ipcb_wake_signal() < 0) {
        errno = ENOSYS;
        return -1;
    }
    if (ns < 1)
        ns = 1;  /* an it_value of zero would disarm the timer */
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = wake_sig;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, &d->timer))
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &d->end);
    ts_add_ns(&d->end, ns);
    memset(&its, 0, sizeof its);
    ts_add_ns(&its.it_value, ns);
    its.it_interval.tv_nsec = IPCB_REFIRE_NS;
    if (timer_settime(d->timer, 0, &its, NULL)) {
        int e = errno;
        timer_delete(d->timer);
        errno = e;
        return -1;
    }
    return 0;
}

/* Ends the timer. A call that failed with EINTR after the deadline becomes
 * ETIMEDOUT; any other EINTR came from a signal of the program's own. */
static void deadline_stop(struct deadline *d, int failed)
{
    int e = errno;
    timer_delete(d->timer);
    if (failed && e == EINTR) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > d->end.tv_sec ||
            (now.tv_sec == d->end.tv_sec && now.tv_nsec >= d->end.tv_nsec))
            e = ETIMEDOUT;
    }
    errno = e;
}

/* ---- message queues ------------------------------------------------------ */

/* A key can be any int, -1 included (ftok's failure value, also a key it can
 * compute): errno is cleared first, so only a failure leaves it set. */
int ipcb_ftok(const char *pathname, int proj_id, key_t *key)
{
    errno = 0;
    *key = ftok(pathname, proj_id);
    return *key == -1 ? errno : 0;
}

int ipcb_setns_ipc(int fd)
{
    return setns(fd, CLONE_NEWIPC) ? errno : 0;
}

int ipcb_unshare_ipc(void)
{
    return unshare(CLONE_NEWIPC) ? errno : 0;
}

int ipcb_msgget(key_t key, int msgflg)
{
    int r = msgget(key, msgflg);
    return r < 0 ? -errno : r;
}

static long read_msgmax(void);

/* A send buffer larger than this is freed after its send, not kept for the thread. */
#define IPCB_SBUF_KEEP (1 << 20)

int ipcb_msgsnd(int msqid, long mtype, const char *data, size_t len, int flags,
                long long timeout_ns)
{
    struct ipcb_tls *t = tls();
    struct deadline d;
    int r, err;
    if (!t)
        return errno;
    if (len > t->scap || !t->sbuf) {
        /* msgsnd refuses a text longer than msgmax (EINVAL) before anything else:
         * refuse it before copying it into a buffer of that size. */
        long msgmax = read_msgmax();
        if (msgmax >= 0 && len > (size_t)msgmax)
            return EINVAL;
        if (grow((void **)&t->sbuf, &t->scap, len, 1, sizeof(long)))
            return errno;
    }
    memcpy(t->sbuf, &mtype, sizeof mtype);
    if (len)
        memcpy(t->sbuf + sizeof mtype, data, len);
    if (timeout_ns < 0) {
        r = msgsnd(msqid, t->sbuf, len, flags);
    } else {
        if (deadline_start(&d, timeout_ns))
            return errno;
        r = msgsnd(msqid, t->sbuf, len, flags);
        deadline_stop(&d, r < 0);
    }
    err = r ? errno : 0;
    if (t->scap > IPCB_SBUF_KEEP) {
        free(t->sbuf);
        t->sbuf = NULL;
        t->scap = 0;
    }
    return err;
}
static long read_msgmax(void)
{
    long v = -1;
    FILE *f = fopen("/proc/sys/kernel/msgmax", "re");
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

/* One msgrcv into one of the slot's buffers, returned (NULL and errno on failure).
 * With maxsize larger than the buffer the call is first made with the buffer's
 * size and without MSG_NOERROR; on E2BIG (the message stays queued) a larger
 * buffer is taken and the call is made again, so the caller sees exactly what a
 * buffer of maxsize bytes would have given. Once the large buffer has grown past
 * the fixed one, calls start with it; a message that fits the fixed buffer is
 * then moved there, where ipcb_recv_packed can hand it out.
 * MSG_COPY copies at most msgmax bytes, so growing past msgmax is pointless. */
static struct ipcb_rmsg *recv_one(struct rslot *s, int msqid, size_t maxsize,
                                  long msgtyp, int flags)
{
    struct ipcb_rmsg *b;
    size_t cap, limit = maxsize;
    int copy_limited = 0;
    if (maxsize != IPCB_ANY_SIZE && (long)maxsize < 0) {
        errno = EINVAL;
        return NULL;
    }
    if (!rslot_fixed(s))
        return NULL;
    if (s->big && s->bigcap > IPCB_FIRST_RCAP) {
        b = s->big;
        cap = s->bigcap;
    } else {
        b = s->m;
        cap = IPCB_FIRST_RCAP;
    }
    for (;;) {
        size_t size = limit < cap ? limit : cap;
        int f = size < maxsize ? (flags & ~MSG_NOERROR) : flags;
        ssize_t n = msgrcv(msqid, &b->mtype, size, msgtyp, f);
        if (n >= 0) {
            if (b != s->m && (size_t)n <= IPCB_FIRST_RCAP) {
                s->m->mtype = b->mtype;
                memcpy(s->m->mtext, b->mtext, (size_t)n);
                b = s->m;
            }
            b->len = n;
            return b;
        }
        if (errno != E2BIG || size >= limit)
            return NULL;
        if ((flags & MSG_COPY) && !copy_limited) {
            long m = read_msgmax();
            copy_limited = 1;
            if (m > 0 && (size_t)m < limit)
                limit = (size_t)m;
            if (size >= limit) {
                errno = E2BIG;
                return NULL;
            }
        }
        if (!(b = rslot_big(s, size <= limit / 2 ? size * 2 : limit)))
            return NULL;
        cap = s->bigcap;
    }
}

static struct ipcb_rmsg *recv_timed(struct rslot *s, int msqid, size_t maxsize,
                                    long msgtyp, int flags, long long timeout_ns)
{
    struct ipcb_rmsg *m;
    struct deadline d;
    if (timeout_ns < 0)
        return recv_one(s, msqid, maxsize, msgtyp, flags);
    if (deadline_start(&d, timeout_ns))
        return NULL;
    m = recv_one(s, msqid, maxsize, msgtyp, flags);
    deadline_stop(&d, m == NULL);
    return m;
}

/* Where the errno goes when there is no buffer to carry it. */
static struct ipcb_rmsg no_memory = {1, ENOMEM, -1, 0};

/* Hands the slot to the caller, with the message or the errno of the failure. */
static struct ipcb_rmsg *lend(struct rslot *s, struct ipcb_rmsg *m)
{
    if (!m) {
        int e = errno;
        if (!s->m)
            return &no_memory;
        m = s->m;
        m->len = -1;
        m->err = e;
    } else {
        m->err = 0;
    }
    m->lent = 1;
    return m;
}

struct ipcb_rmsg *ipcb_msgrcv(int msqid, size_t maxsize, long msgtyp, int flags,
                              long long timeout_ns)
{
    struct ipcb_tls *t = tls();
    struct rslot *s;
    if (!t || !(s = take_rslot(t)))
        return &no_memory;
    return lend(s, recv_timed(s, msqid, maxsize, msgtyp, flags, timeout_ns));
}

/* The common case, with fewer arguments for cffi to convert: no timeout. */
int ipcb_send(int msqid, long mtype, const char *data, size_t len, int flags)
{
    return ipcb_msgsnd(msqid, mtype, data, len, flags, -1);
}

/* ipcb_msgrcv of a message of any size without a timeout, MSG_NOERROR, MSG_EXCEPT
 * or MSG_COPY, for msgtyp in the range of a C int, in one integer each way: cffi
 * calls a function of one integer argument without building an argument tuple,
 * and Python splits an integer result with a few operators where it would read
 * each field of a struct through cffi. The layout, stated here only (Python takes
 * the constants from the shim):
 * arg: bits 0-30 msqid (never negative for a live queue), IPCB_RECV_NOWAIT (bit 31)
 * for IPC_NOWAIT, msgtyp (signed) shifted left by IPCB_PACK_SHIFT.
 * The result, r:
 *   r >= 0: the message is in a chunk of the arena, lent: mtype is
 *     r >> IPCB_PACK_SHIFT, and the low IPCB_PACK_SHIFT bits are the arena offset
 *     where its text ends. The chunk starts at that offset rounded down to a
 *     multiple of IPCB_CHUNK, with a struct ipcb_rmsg: the text starts at its
 *     mtext, and clearing its lent (the chunk's first byte) gives it back.
 *   IPCB_RECV_RARE - r >= 0: the message is in the calling thread's slot
 *     IPCB_RECV_RARE - r, lent, but does not fit the above (a buffer outside the
 *     arena, a longer message, an mtype >= 2**31): read it from ipcb_rslot().
 *   otherwise: -errno; nothing is lent. */
long long ipcb_recv_packed(long long arg)
{
    unsigned long long bits = (unsigned long long)arg;
    int msqid = (int)(bits & (IPCB_RECV_NOWAIT - 1));
    long msgtyp = (int)(unsigned int)(bits >> IPCB_PACK_SHIFT);
    struct ipcb_tls *t = tls();
    struct rslot *s;
    struct ipcb_rmsg *m;
    if (!t || !(s = take_rslot(t)))
        return -ENOMEM;
    m = recv_one(s, msqid, IPCB_ANY_SIZE, msgtyp, bits & IPCB_RECV_NOWAIT ? IPC_NOWAIT : 0);
    if (!m)
        return -(long long)errno;
    m->err = 0;
    m->lent = 1;
    if (m == s->m && in_arena(m) && m->mtype <= 0x7fffffffL)
        return (long long)m->mtype << IPCB_PACK_SHIFT |
               (long long)((char *)m->mtext - arena + m->len);
    return IPCB_RECV_RARE - (long long)(s - t->r);
}

/* The buffer of the calling thread's slot k lent with an IPCB_RECV_RARE result. */
struct ipcb_rmsg *ipcb_rslot(size_t k)
{
    struct rslot *s = &tls_cur->r[k];
    return s->big && s->big->lent ? s->big : s->m;
}

/* Sends messages from..count-1 in order (message i is text[ends[i-1]:ends[i]]);
 * returns the index reached. When that is less than count, *err says why.
 * The timeout applies to each message that must wait for room. */
size_t ipcb_msgsnd_many(int msqid, size_t from, size_t count, const long *mtypes,
                        const char *text, const size_t *ends, int flags, long long timeout_ns,
                        int *err)
{
    size_t i;
    for (i = from; i < count; i++) {
        size_t start = i ? ends[i - 1] : 0;
        *err = ipcb_msgsnd(msqid, mtypes[i], text + start, ends[i] - start, flags, timeout_ns);
        if (*err)
            return i;
    }
    return count;
}

/* A batch that is not lent, emptied; large buffers are given back first. The
 * caller marks it lent when it hands it out. */
static struct ipcb_batch *take_batch(struct ipcb_tls *t)
{
    struct ipcb_batch *b = NULL;
    size_t i, n = t->nb;
    for (i = 0; i < n && !b; i++)
        if (t->b[i] && !t->b[i]->lent)
            b = t->b[i];
    for (i = 0; i < n && !b; i++)
        if (!t->b[i])
            b = t->b[i] = calloc(1, sizeof *b);
    if (!b && n >= IPCB_MAX_SLOTS) {
        for (i = 0; i < n; i++)
            t->b[i]->lent = 0;
        b = t->b[0];
    }
    if (!b && !more_slots((void **)&t->b, &t->nb, sizeof *t->b))
        b = t->b[n] = calloc(1, sizeof *b);
    if (!b) {
        errno = ENOMEM;
        return NULL;
    }
    if (b->text_cap > IPCB_KEEP_BYTES) {
        free(b->text);
        b->text = NULL;
        b->text_cap = 0;
    }
    if (b->cap > IPCB_KEEP_BYTES / sizeof(long)) {
        free(b->mtypes);
        free(b->ends);
        b->mtypes = NULL;
        b->ends = NULL;
        b->cap = 0;
    }
    b->count = 0;
    b->used = 0;
    b->err = 0;
    b->changed = 0;
    b->lent = 1;
    return b;
}

static int batch_push(struct ipcb_batch *b, long mtype, const char *data, size_t len)
{
    if (b->count == b->cap) {
        size_t cap = b->cap, cap2 = b->cap;
        if (grow((void **)&b->mtypes, &cap, b->count + 1, sizeof(long), 0) ||
            grow((void **)&b->ends, &cap2, b->count + 1, sizeof(size_t), 0))
            return -1;
        b->cap = cap < cap2 ? cap : cap2;
    }
    if (grow((void **)&b->text, &b->text_cap, b->used + len, 1, 0))
        return -1;
    memcpy(b->text + b->used, data, len);
    b->used += len;
    b->mtypes[b->count] = mtype;
    b->ends[b->count] = b->used;
    b->count++;
    return 0;
}

/* Receives up to max_count messages: the first as flags and timeout say, the
 * rest only while they are already queued. An error after the first message
 * ends the batch and is left in err; the messages already taken are kept. */
struct ipcb_batch *ipcb_msgrcv_many(int msqid, size_t max_count, size_t maxsize,
                                    long msgtyp, int flags, long long timeout_ns)
{
    struct ipcb_tls *t = tls();
    struct ipcb_batch *b;
    struct rslot *s;
    size_t i;
    if (!t || !(b = take_batch(t)))
        return NULL;
    if (!(s = take_rslot(t))) {
        b->err = ENOMEM;
        return b;
    }
    for (i = 0; i < max_count; i++) {
        struct ipcb_rmsg *m;
        if (i == 0)
            m = recv_timed(s, msqid, maxsize, msgtyp, flags, timeout_ns);
        else
            m = recv_one(s, msqid, maxsize, msgtyp, flags | IPC_NOWAIT);
        if (!m) {
            if (i == 0 || errno != ENOMSG)
                b->err = errno;
            break;
        }
        if (batch_push(b, m->mtype, m->mtext, (size_t)m->len)) {
            b->err = errno;  /* that message is lost to ENOMEM: say so */
            break;
        }
    }
    return b;
}

int ipcb_msgctl(int msqid, int cmd, struct msqid_ds *buf)
{
    int r = msgctl(msqid, cmd, buf);
    return r < 0 ? -errno : r;
}

static int same_queue(const struct msqid_ds *a, const struct msqid_ds *b)
{
    return a->msg_qnum == b->msg_qnum && a->__msg_cbytes == b->__msg_cbytes &&
           a->msg_stime == b->msg_stime && a->msg_rtime == b->msg_rtime &&
           a->msg_ctime == b->msg_ctime && a->msg_lspid == b->msg_lspid &&
           a->msg_lrpid == b->msg_lrpid;
}

/* Whether the message at index i is still the one the batch holds as message j. */
static int still_at(struct rslot *s, int msqid, size_t i, const struct ipcb_batch *b,
                    size_t j, size_t size)
{
    size_t start = j ? b->ends[j - 1] : 0, len = b->ends[j] - start;
    ssize_t got = msgrcv(msqid, &s->big->mtype, size, (long)i, MSG_COPY | IPC_NOWAIT);
    return got == (ssize_t)len && s->big->mtype == b->mtypes[j] &&
           memcmp(s->big->mtext, b->text + start, len) == 0;
}

/* Copies every message with MSG_COPY, without taking any. MSG_COPY walks the
 * queue from its head on each call and copies the whole user buffer into the
 * kernel first, so the buffer starts near the average message size and only
 * grows (on E2BIG) to the largest message seen.
 * changed is set when the queue ran out early, when IPC_STAT before and after
 * differ, or when the first or last message is no longer the one copied: IPC_STAT
 * times have a resolution of one second, so a consumer taking the head and a
 * producer adding a message of the same size, within a second, change nothing
 * IPC_STAT shows; they do change the head, or the tail.
 * copied, unless NULL, counts the messages copied so far, for a progress report. */
struct ipcb_batch *ipcb_msgcopy_all(int msqid, size_t *copied)
{
    struct ipcb_tls *t = tls();
    struct ipcb_batch *b;
    struct rslot *s;
    struct msqid_ds before, after;
    size_t i, n, size = 64, msgmax = 0;
    if (!t || !(b = take_batch(t)))
        return NULL;
    if (!(s = take_rslot(t))) {
        b->err = ENOMEM;
        return b;
    }
    if (msgctl(msqid, IPC_STAT, &before)) {
        b->err = errno;
        return b;
    }
    n = before.msg_qnum;
    if (n && before.__msg_cbytes / n > size)
        size = before.__msg_cbytes / n;
    if (!rslot_big(s, size)) {
        b->err = errno;
        return b;
    }
    for (i = 0; i < n; i++) {
        ssize_t got = msgrcv(msqid, &s->big->mtype, size, (long)i, MSG_COPY | IPC_NOWAIT);
        if (got < 0 && errno == E2BIG) {
            if (!msgmax) {
                long m = read_msgmax();
                msgmax = m > 0 ? (size_t)m : 8192;
            }
            if (size >= msgmax) {
                b->err = E2BIG;
                return b;
            }
            size = size * 2 < msgmax ? size * 2 : msgmax;
            if (!rslot_big(s, size)) {
                b->err = errno;
                return b;
            }
            i--;
            continue;
        }
        if (got < 0) {
            if (errno == ENOMSG)
                b->changed = 1;
            else
                b->err = errno;
            return b;
        }
        if (batch_push(b, s->big->mtype, s->big->mtext, (size_t)got)) {
            b->err = errno;
            return b;
        }
        /* Read by another thread while this one copies: see _msgcopy_all. */
        if (copied)
            __atomic_store_n(copied, i + 1, __ATOMIC_RELAXED);
    }
    if (n && (!still_at(s, msqid, 0, b, 0, size) || !still_at(s, msqid, n - 1, b, n - 1, size))) {
        b->changed = 1;
        return b;
    }
    if (msgctl(msqid, IPC_STAT, &after))
        b->err = errno;
    else if (!same_queue(&before, &after))
        b->changed = 1;
    return b;
}

/* ---- the SEM_UNDO ledger ---------------------------------------------------
 * What this process asked the kernel to undo through ipcbind, per set: the
 * negated sum of its SEM_UNDO operations, as the kernel's semadj. Shared by the
 * threads of the process, emptied in a forked child. */

struct undo_set {
    int semid;
    size_t n;
    int *adj;
    struct undo_set *next;
};

static struct undo_set *ledger;
static size_t ledger_len;
static pthread_mutex_t ledger_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t ledger_once = PTHREAD_ONCE_INIT;

static void ledger_free_all(void)
{
    ledger_len = 0;
    while (ledger) {
        struct undo_set *u = ledger;
        ledger = u->next;
        free(u->adj);
        free(u);
    }
}

static void ledger_prefork(void) { pthread_mutex_lock(&ledger_lock); }
static void ledger_parent(void) { pthread_mutex_unlock(&ledger_lock); }

static void ledger_child(void)
{
    pthread_mutex_init(&ledger_lock, NULL);
    ledger_free_all();  /* semadj is not inherited across fork */
}

static void ledger_init(void)
{
    pthread_atfork(ledger_prefork, ledger_parent, ledger_child);
}

/* Every path takes the lock through here, so the fork handlers exist before the
 * lock is ever held: a fork while another thread holds it must not leave the
 * child a lock that nobody will release. */
static void ledger_lock_take(void)
{
    pthread_once(&ledger_once, ledger_init);
    pthread_mutex_lock(&ledger_lock);
}

static struct undo_set **ledger_find(int semid)
{
    struct undo_set **p = &ledger;
    while (*p && (*p)->semid != semid)
        p = &(*p)->next;
    return p;
}

static void ledger_remove(struct undo_set **p)
{
    struct undo_set *u = *p;
    ledger_len--;
    *p = u->next;
    free(u->adj);
    free(u);
}

static int all_zero(const struct undo_set *u)
{
    size_t i;
    for (i = 0; i < u->n; i++)
        if (u->adj[i])
            return 0;
    return 1;
}

/* A set whose adjustments are back at zero keeps its entry while it is in use:
 * dropping it at once would put a free and a calloc on every acquire/release
 * pair. Such entries are pruned when a new set would make the ledger longer than
 * IPCB_LEDGER_KEEP, so a long-running process that uses many short-lived sets does
 * not keep one for every set it ever touched. */
#define IPCB_LEDGER_KEEP 64

static void ledger_prune(void)
{
    struct undo_set **p = &ledger;
    while (*p) {
        if (all_zero(*p))
            ledger_remove(p);
        else
            p = &(*p)->next;
    }
}

static void ledger_apply(int semid, const struct sembuf *ops, size_t nops)
{
    struct undo_set **p, *u;
    size_t i, max = 0;
    int any = 0;
    for (i = 0; i < nops; i++) {
        if ((ops[i].sem_flg & SEM_UNDO) && ops[i].sem_op) {
            any = 1;
            if (ops[i].sem_num >= max)
                max = (size_t)ops[i].sem_num + 1;
        }
    }
    if (!any)
        return;
    ledger_lock_take();
    p = ledger_find(semid);
    u = *p;
    if (!u) {
        if (ledger_len >= IPCB_LEDGER_KEEP)
            ledger_prune();
        u = calloc(1, sizeof *u);
        if (!u)
            goto out;
        u->semid = semid;
        u->next = ledger;
        ledger = u;
        ledger_len++;
    }
    if (u->n < max) {
        int *a = realloc(u->adj, max * sizeof *a);
        if (!a)
            goto out;
        memset(a + u->n, 0, (max - u->n) * sizeof *a);
        u->adj = a;
        u->n = max;
    }
    /* A zero sem_op with SEM_UNDO may name a semaphore beyond adj (max only
     * counts non-zero ops): it changes no semadj, so it must not be indexed. */
    for (i = 0; i < nops; i++)
        if ((ops[i].sem_flg & SEM_UNDO) && ops[i].sem_op)
            u->adj[ops[i].sem_num] -= ops[i].sem_op;
out:
    pthread_mutex_unlock(&ledger_lock);
}

/* SETVAL and SETALL zero the semadj of the semaphores they set, in every process;
 * num < 0 means the whole set. IPC_RMID drops the set. */
static void ledger_clear(int semid, int num, int drop)
{
    struct undo_set **p;
    ledger_lock_take();
    p = ledger_find(semid);
    if (*p) {
        if (drop || num < 0)
            ledger_remove(p);
        else if ((size_t)num < (*p)->n) {
            (*p)->adj[num] = 0;
            if (all_zero(*p))
                ledger_remove(p);
        }
    }
    pthread_mutex_unlock(&ledger_lock);
}

void ipcb_ledger_drop(int semid)
{
    ledger_clear(semid, -1, 1);
}

/* Writes semid, n, adj[0..n-1] for each set in the ledger (some may be all zero);
 * returns the number of ints needed, which may exceed cap (then call again). */
size_t ipcb_ledger_dump(int *out, size_t cap)
{
    struct undo_set *u;
    size_t need = 0;
    ledger_lock_take();
    for (u = ledger; u; u = u->next) {
        if (need + 2 + u->n <= cap) {
            out[need] = u->semid;
            out[need + 1] = (int)u->n;
            memcpy(out + need + 2, u->adj, u->n * sizeof *u->adj);
        }
        need += 2 + u->n;
    }
    pthread_mutex_unlock(&ledger_lock);
    return need;
}

/* ---- semaphores -------------------------------------------------------------- */

int ipcb_semget(key_t key, int nsems, int semflg)
{
    int r = semget(key, nsems, semflg);
    return r < 0 ? -errno : r;
}

int ipcb_semop(int semid, struct sembuf *ops, size_t nops, long long timeout_ns)
{
    int r;
    if (timeout_ns < 0) {
        r = semop(semid, ops, nops);
    } else {
        struct timespec ts;
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        r = semtimedop(semid, ops, nops, &ts);
    }
    if (r)
        return errno;
    ledger_apply(semid, ops, nops);
    return 0;
}

int ipcb_semop1(int semid, unsigned short num, short op, short flg, long long timeout_ns)
{
    struct sembuf b;
    b.sem_num = num;
    b.sem_op = op;
    b.sem_flg = flg;
    return ipcb_semop(semid, &b, 1, timeout_ns);
}

int ipcb_semctl_val(int semid, int semnum, int cmd, int val)
{
    union ipcb_semun arg;
    int r;
    arg.val = val;
    r = semctl(semid, semnum, cmd, arg);
    if (r < 0)
        return -errno;
    if (cmd == SETVAL || cmd == IPC_RMID)
        ledger_clear(semid, semnum, cmd == IPC_RMID);
    return r;
}

int ipcb_semctl_array(int semid, int cmd, unsigned short *values)
{
    union ipcb_semun arg;
    int r;
    arg.array = values;
    r = semctl(semid, 0, cmd, arg);
    if (r < 0)
        return -errno;
    if (cmd == SETALL)
        ledger_clear(semid, -1, 0);
    return r;
}

int ipcb_semctl_ds(int semid, int semnum, int cmd, struct semid_ds *buf)
{
    union ipcb_semun arg;
    int r;
    arg.buf = buf;
    r = semctl(semid, semnum, cmd, arg);
    return r < 0 ? -errno : r;
}

/* ipcb_semop1 without a timeout, its arguments packed into one integer: a cffi
 * function of one argument is called without building an argument tuple and
 * converting each argument: a quarter less time per uncontended semop than a
 * five-argument call, measured.
 * Bits 0-31: semid (never negative for a live set), 32-47: sem_num, 48-63: sem_op.
 * Signed, because CPython converts a 64-bit int to long long faster than to
 * unsigned long long. */
static int semop_packed(long long packed, short flg)
{
    unsigned long long bits = (unsigned long long)packed;
    return ipcb_semop1((int)(bits & 0xffffffffULL), (unsigned short)(bits >> 32),
                       (short)(unsigned short)(bits >> 48), flg, -1);
}

int ipcb_semop_packed(long long packed)
{
    return semop_packed(packed, 0);
}

int ipcb_semop_packed_undo(long long packed)
{
    return semop_packed(packed, SEM_UNDO);
}

/* ---- shared memory ------------------------------------------------------------ */

int ipcb_shmget(key_t key, size_t size, int shmflg)
{
    int r = shmget(key, size, shmflg);
    return r < 0 ? -errno : r;
}

int ipcb_shmat(int shmid, int shmflg, void **at)
{
    void *p = shmat(shmid, NULL, shmflg);
    if (p == (void *)-1)
        return errno;
    *at = p;
    return 0;
}

/* Puts the segment that ipcb_shmat attached at *from in place of the mapping at
 * `to`, with the same access, then detaches *from whether or not that worked, and
 * clears it: the caller can tell, whatever interrupted it, whether it is still to
 * be detached. Attached at *from, the segment cannot be destroyed in between, so
 * the one mapped at `to` is that segment and no other: its size, which the caller
 * read while it was attached, is the size of the mapping it replaces. */
int ipcb_shmat_move(int shmid, int shmflg, void **from, void *to)
{
    int err = 0;
    if (shmat(shmid, to, (shmflg & (SHM_RDONLY | SHM_EXEC)) | SHM_REMAP) == (void *)-1)
        err = errno;
    shmdt(*from);
    *from = NULL;
    return err;
}

int ipcb_shmdt(void *addr)
{
    return shmdt(addr) ? errno : 0;
}

int ipcb_shmctl(int shmid, int cmd, struct shmid_ds *buf)
{
    int r = shmctl(shmid, cmd, buf);
    return r < 0 ? -errno : r;
}

/* ---- the table for ipcbind._accel (calls.h) ------------------------------------ */

static const struct ipcb_calls_table calls = {
    sizeof(struct ipcb_calls_table), ipcb_msgsnd, ipcb_msgrcv, ipcb_semop1,
};

const void *ipcb_calls(void)
{
    return &calls;
}
