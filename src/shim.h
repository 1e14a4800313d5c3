/* The interface cffi sees (cdef syntax). Struct layouts and constant values are
 * left to the C compiler ("...") so they are right on every architecture. */

typedef int... key_t;
typedef int... uid_t;
typedef int... gid_t;
typedef int... mode_t;
typedef int... pid_t;
typedef int... time_t;
typedef int... msgqnum_t;
typedef int... msglen_t;
typedef int... __syscall_ulong_t;
typedef int... shmatt_t;

#define IPC_PRIVATE ...
#define IPC_CREAT ...
#define IPC_EXCL ...
#define IPC_NOWAIT ...
#define IPC_RMID ...
#define IPC_SET ...
#define IPC_STAT ...
#define IPC_INFO ...
#define MSG_NOERROR ...
#define MSG_EXCEPT ...
#define MSG_COPY ...
#define MSG_STAT ...
#define MSG_INFO ...
#define MSG_STAT_ANY ...
#define SEM_UNDO ...
#define GETPID ...
#define GETVAL ...
#define GETALL ...
#define GETNCNT ...
#define GETZCNT ...
#define SETVAL ...
#define SETALL ...
#define SEM_STAT ...
#define SEM_INFO ...
#define SEM_STAT_ANY ...
#define SHM_RDONLY ...
#define SHM_RND ...
#define SHM_EXEC ...
#define SHM_REMAP ...
#define SHM_LOCK ...
#define SHM_UNLOCK ...
#define SHM_STAT ...
#define SHM_INFO ...
#define SHM_STAT_ANY ...
#define SHM_HUGETLB ...
#define SHM_NORESERVE ...
#define SHM_DEST ...
#define SHM_LOCKED ...
#define SHMLBA ...
#define MAP_PRIVATE ...
#define MAP_NORESERVE ...
#define CLONE_NEWIPC ...
#define IPCB_ANY_SIZE ...
#define IPCB_CHUNK ...
#define IPCB_RECV_RARE ...
#define IPCB_RECV_NOWAIT ...
#define IPCB_PACK_SHIFT ...

struct ipc_perm {
    key_t __key;
    uid_t uid;
    gid_t gid;
    uid_t cuid;
    gid_t cgid;
    mode_t mode;
    ...;
};

struct msqid_ds {
    struct ipc_perm msg_perm;
    time_t msg_stime;
    time_t msg_rtime;
    time_t msg_ctime;
    __syscall_ulong_t __msg_cbytes;
    msgqnum_t msg_qnum;
    msglen_t msg_qbytes;
    pid_t msg_lspid;
    pid_t msg_lrpid;
    ...;
};

struct msginfo {
    int msgpool;
    int msgmap;
    int msgmax;
    int msgmnb;
    int msgmni;
    int msgssz;
    int msgtql;
    unsigned short msgseg;
    ...;
};

struct semid_ds {
    struct ipc_perm sem_perm;
    time_t sem_otime;
    time_t sem_ctime;
    __syscall_ulong_t sem_nsems;
    ...;
};

struct seminfo {
    int semmap;
    int semmni;
    int semmns;
    int semmnu;
    int semmsl;
    int semopm;
    int semume;
    int semusz;
    int semvmx;
    int semaem;
    ...;
};

struct shmid_ds {
    struct ipc_perm shm_perm;
    size_t shm_segsz;
    time_t shm_atime;
    time_t shm_dtime;
    time_t shm_ctime;
    pid_t shm_cpid;
    pid_t shm_lpid;
    shmatt_t shm_nattch;
    ...;
};

struct shminfo {
    __syscall_ulong_t shmmax;
    __syscall_ulong_t shmmin;
    __syscall_ulong_t shmmni;
    __syscall_ulong_t shmseg;
    __syscall_ulong_t shmall;
    ...;
};

struct shm_info {
    int used_ids;
    __syscall_ulong_t shm_tot;
    __syscall_ulong_t shm_rss;
    __syscall_ulong_t shm_swp;
    __syscall_ulong_t swap_attempts;
    __syscall_ulong_t swap_successes;
    ...;
};

struct sembuf {
    unsigned short sem_num;
    short sem_op;
    short sem_flg;
    ...;
};

/* A received message (or len -1 and its errno in err), in a buffer of the calling
 * thread lent to the caller: clear lent once it is copied out. */
struct ipcb_rmsg {
    unsigned char lent;
    int err;
    ssize_t len;
    long mtype;
    char mtext[];
};

/* Several messages, in buffers owned by the calling thread; lent as above. */
struct ipcb_batch {
    int lent;
    size_t count;
    size_t used;
    long *mtypes;
    size_t *ends;
    char *text;
    int err;
    int changed;
    ...;
};

/* Namespace moves of the calling thread: 0, or the errno. */
int ipcb_setns_ipc(int fd);
int ipcb_unshare_ipc(void);

/* The IPC calls hand back their errno: -errno from a call with a result of its own,
 * the errno (0: success) from one without, or in what they return or fill in. */
int ipcb_ftok(const char *pathname, int proj_id, key_t *key);
int ipcb_msgget(key_t key, int msgflg);
int ipcb_msgsnd(int msqid, long mtype, const char *data, size_t len, int flags,
                long long timeout_ns);
struct ipcb_rmsg *ipcb_msgrcv(int msqid, size_t maxsize, long msgtyp, int flags,
                              long long timeout_ns);
int ipcb_send(int msqid, long mtype, const char *data, size_t len, int flags);
/* ipcb_msgrcv's common case in one integer each way, its message in an arena of
 * buffers shared by all threads (or in a slot that ipcb_rslot returns): see shim.c. */
long long ipcb_recv_packed(long long arg);
struct ipcb_rmsg *ipcb_rslot(size_t k);
char *ipcb_arena(size_t *size);
size_t ipcb_msgsnd_many(int msqid, size_t from, size_t count, const long *mtypes,
                        const char *text, const size_t *ends, int flags, long long timeout_ns,
                        int *err);
struct ipcb_batch *ipcb_msgrcv_many(int msqid, size_t max_count, size_t maxsize,
                                    long msgtyp, int flags, long long timeout_ns);
struct ipcb_batch *ipcb_msgcopy_all(int msqid, size_t *copied);
int ipcb_msgctl(int msqid, int cmd, struct msqid_ds *buf);

int ipcb_semget(key_t key, int nsems, int semflg);
int ipcb_semop(int semid, struct sembuf *ops, size_t nops, long long timeout_ns);
int ipcb_semop1(int semid, unsigned short num, short op, short flg, long long timeout_ns);
int ipcb_semctl_val(int semid, int semnum, int cmd, int val);
int ipcb_semctl_array(int semid, int cmd, unsigned short *values);
int ipcb_semctl_ds(int semid, int semnum, int cmd, struct semid_ds *buf);

size_t ipcb_ledger_dump(int *out, size_t cap);
void ipcb_ledger_drop(int semid);

int ipcb_wake_signal(void);

/* One semop without timeout, arguments packed in one integer (see shim.c). */
int ipcb_semop_packed(long long packed);
int ipcb_semop_packed_undo(long long packed);

int ipcb_shmget(key_t key, size_t size, int shmflg);
/* shmat at an address the kernel chooses (*at). */
int ipcb_shmat(int shmid, int shmflg, void **at);
/* Moves that attachment onto the mapping at `to`, which it replaces, and clears
 * *from; see shim.c. */
int ipcb_shmat_move(int shmid, int shmflg, void **from, void *to);
int ipcb_shmdt(void *addr);
int ipcb_shmctl(int shmid, int cmd, struct shmid_ds *buf);

/* The address of the table of shim functions that ipcbind._accel calls (calls.h). */
const void *ipcb_calls(void);
