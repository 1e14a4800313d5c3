/* The C baseline of the shared memory cases of run.py: memcpy out of (read) or into
 * (write) an attached segment, from or to a buffer made once.
 *
 *     shm_copy read|write SIZE ITERATIONS
 *
 * Prints the thread CPU time per copy in nanoseconds. The segment is marked for
 * removal as soon as it is attached, so it goes with the process whatever happens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ipc.h>
#include <sys/shm.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int reading, id;
    size_t size;
    long iter, i;
    char *seg, *buf;
    double start;
    if (argc != 4 || (strcmp(argv[1], "read") && strcmp(argv[1], "write"))) {
        fprintf(stderr, "usage: shm_copy read|write SIZE ITERATIONS\n");
        return 2;
    }
    reading = !strcmp(argv[1], "read");
    size = (size_t)atol(argv[2]);
    iter = atol(argv[3]);
    id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    if (id < 0 || (seg = shmat(id, NULL, 0)) == (void *)-1) {
        perror("shm_copy");
        return 1;
    }
    shmctl(id, IPC_RMID, NULL);
    buf = malloc(size);
    if (!buf)
        return 1;
    memset(buf, 1, size);   /* every page touched before the clock starts */
    memset(seg, 2, size);
    start = now_ns();
    for (i = 0; i < iter; i++) {
        if (reading)
            memcpy(buf, seg, size);
        else
            memcpy(seg, buf, size);
        __asm__ volatile("" ::: "memory");   /* each copy is made, none merged */
    }
    printf("%.1f\n", (now_ns() - start) / iter);
    return 0;
}
