/* Checks, in plain C and without ipcbind, the kernel interfaces that qemu-user is
 * known to get wrong, so that a test failing under emulation can be told apart from a
 * bug in ipcbind. scripts/arm64-test.sh compiles and runs it inside the arm64 root file
 * system before the tests. Prints one line per check; exits 0 whatever it finds. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/syscall.h>

static void ignore(int sig)
{
    (void)sig;
}

/* The shim aims a POSIX timer at the calling thread with the highest free real-time
 * signal; report which signals such a timer accepts. */
static void check_timer_signals(void)
{
    int sig;
    printf("emulator-check: timer_create(SIGEV_THREAD_ID) with");
    for (sig = SIGRTMAX; sig >= SIGRTMAX - 3; sig--) {
        struct sigaction sa;
        struct sigevent sev;
        timer_t timer;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = ignore;
        sigaction(sig, &sa, NULL);
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = sig;
        /* glibc before 2.37 has no sigev_notify_thread_id name for this field. */
        sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0) {
            timer_delete(timer);
            printf(" SIGRTMAX-%d: ok;", SIGRTMAX - sig);
        } else {
            printf(" SIGRTMAX-%d: %s;", SIGRTMAX - sig, strerror(errno));
        }
    }
    printf(" (all ok on a real kernel)\n");
}

/* Walks the indexes up to the highest in use, looking for id with cmd (an index
 * holds no object, EINVAL, or one we may not read, EACCES: the last error tells). */
static const char *found_by_index(int id, int is_sem, int cmd)
{
    int i, highest, err = 0;
    struct msqid_ds mds;
    struct semid_ds sds;
    struct msginfo mi;
    struct seminfo si;
    if (is_sem)
        highest = semctl(0, 0, SEM_INFO, &si);
    else
        highest = msgctl(0, MSG_INFO, (struct msqid_ds *)&mi);
    for (i = 0; i <= highest; i++) {
        int r = is_sem ? semctl(i, 0, cmd, &sds) : msgctl(i, cmd, &mds);
        if (r == id)
            return "ok";
        if (r < 0)
            err = errno;
    }
    return err ? strerror(err) : "not found";
}

int main(void)
{
    struct {
        long mtype;
        char mtext[8];
    } msg = {1, "x"};
    struct msqid_ds ds;
    int q, s;

    setvbuf(stdout, NULL, _IOLBF, 0);
    check_timer_signals();

    q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    s = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
    if (q < 0 || s < 0) {
        printf("emulator-check: cannot make a queue and a set: %s\n", strerror(errno));
        return 0;
    }
    printf("emulator-check: MSG_STAT: %s; MSG_STAT_ANY: %s; SEM_STAT: %s; SEM_STAT_ANY: %s"
           " (all ok on Linux >= 4.17)\n",
           found_by_index(q, 0, MSG_STAT), found_by_index(q, 0, MSG_STAT_ANY),
           found_by_index(s, 1, SEM_STAT), found_by_index(s, 1, SEM_STAT_ANY));

    memset(&ds, 0, sizeof ds);
    if (msgsnd(q, &msg, 1, 0) == 0 && msgrcv(q, &msg, sizeof msg.mtext, 0, 0) == 1
            && msgctl(q, IPC_STAT, &ds) == 0)
        printf("emulator-check: IPC_STAT after a send and a receive: msg_lspid %s,"
               " msg_lrpid %s (both ok on a real kernel)\n",
               ds.msg_lspid == getpid() ? "ok" : "wrong",
               ds.msg_lrpid == getpid() ? "ok" : "wrong");
    else
        printf("emulator-check: send, receive, IPC_STAT: %s\n", strerror(errno));

    msgctl(q, IPC_RMID, NULL);
    semctl(s, 0, IPC_RMID);
    return 0;
}
