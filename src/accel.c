/* ipcbind._accel: the hottest single calls as C methods of the Python classes.
 *
 * MessageQueue.send and .receive, and Semaphore.acquire, .release, __enter__ and
 * __exit__ become method descriptors written against the CPython API. Each takes
 * the common case itself: arguments of the exact built-in types, no timeout. A
 * call with anything else (another argument type, an unknown keyword, a timeout,
 * maxsize...) goes, as it was made, to the Python method the descriptor replaced,
 * before any system call. A system call that fails hands its errno to the Python
 * function the Python method hands its own failures to, which raises what the
 * Python method raises, or after EINTR (once the signal handlers have run) makes
 * the call again: behaviour is the Python method's in every case.
 *
 * The system calls are made through the shim's own functions (calls.h), never a
 * copy of them, so there is one set of per-thread receive buffers and one
 * SEM_UNDO ledger in the process. Every call first runs holding the GIL with
 * IPC_NOWAIT, which never sleeps: releasing and taking back the GIL costs more than
 * the call. Only when that finds no message, no room or a semaphore too low, and
 * the caller wants to wait, is the call made again without the GIL, blocking.
 *
 * Built for CPython with the GIL only (setup.py); ipcbind._seam loads it unless
 * IPCBIND_ACCELERATOR=0, and works without it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/ipc.h>
#include <sys/sem.h>

#include "calls.h"

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

#define SEMVMX 32767

static const struct ipcb_calls_table *calls;
static PyTypeObject *message_type;

/* ---- reading self ---------------------------------------------------------------
 * An attribute of self is read from its __slots__ slot, at the offset its member
 * descriptor gives (found once, at install); a class without that slot is read
 * with getattr. */

struct attr {
    Py_ssize_t offset;  /* -1: use getattr */
    PyObject *name;
};

static int attr_find(PyObject *cls, const char *name, struct attr *a)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (!d)
        return -1;
    a->offset = -1;
    if (Py_TYPE(d) == &PyMemberDescr_Type &&
        ((PyMemberDescrObject *)d)->d_member->type == Py_T_OBJECT_EX)
        a->offset = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    Py_XSETREF(a->name, PyUnicode_InternFromString(name));
    return a->name ? 0 : -1;
}

/* self's attribute as a C long in lo..hi; -1 when it is anything else. */
static int attr_long(PyObject *self, const struct attr *a, long lo, long hi, long *out)
{
    PyObject *v;
    long x;
    int overflow;
    if (a->offset >= 0) {
        v = *(PyObject **)((char *)self + a->offset);
        if (!v)
            return -1;
        Py_INCREF(v);
    } else if (!(v = PyObject_GetAttr(self, a->name))) {
        PyErr_Clear();
        return -1;
    }
    if (!PyLong_CheckExact(v)) {
        Py_DECREF(v);
        return -1;
    }
    x = PyLong_AsLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (overflow || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

/* ---- arguments ------------------------------------------------------------------ */

#define MAX_PARAMS 6

struct method {
    PyObject *fallback;            /* the Python method this one replaced */
    PyObject *failed;              /* what it calls with the errno of a failed call */
    int nparams;
    int npositional;               /* the first npositional may come by position */
    const char *params[MAX_PARAMS];
    PyObject *names[MAX_PARAMS];   /* interned */
};

/* The call's arguments in out[0..nparams-1] by parameter (NULL: not given); -1 for
 * a call the fast path leaves to the Python method (too many positionals, an
 * unknown keyword or one given twice), which then says what is wrong. */
static int bind_args(const struct method *m, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames, PyObject **out)
{
    Py_ssize_t i, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int j;
    if (nargs > m->npositional)
        return -1;
    for (j = 0; j < m->nparams; j++)
        out[j] = j < nargs ? args[j] : NULL;
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        for (j = 0; j < m->nparams; j++)
            if (key == m->names[j])
                break;
        if (j == m->nparams)
            for (j = 0; j < m->nparams; j++)
                if (PyUnicode_Compare(key, m->names[j]) == 0)
                    break;
        if (PyErr_Occurred())
            PyErr_Clear();
        if (j == m->nparams || out[j])
            return -1;
        out[j] = args[nargs + i];
    }
    return 0;
}

/* The Python method, called as this one was. */
static PyObject *fall_back(const struct method *m, PyObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *stack[1 + MAX_PARAMS], **all = stack, *r;
    Py_ssize_t i, n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (n > MAX_PARAMS && !(all = PyMem_Malloc((size_t)(n + 1) * sizeof *all)))
        return PyErr_NoMemory();
    all[0] = self;
    for (i = 0; i < n; i++)
        all[i + 1] = args[i];
    r = PyObject_Vectorcall(m->fallback, all, (size_t)nargs + 1, kwnames);
    if (all != stack)
        PyMem_Free(all);
    return r;
}

/* A bool argument (absent: dflt) as 0 or 1; -1 for anything else, True and False
 * being the only objects the fast path takes. */
static int flag(PyObject *v, int dflt)
{
    if (!v)
        return dflt;
    return v == Py_True ? 1 : v == Py_False ? 0 : -1;
}

/* An int argument (absent: dflt) in lo..hi; -1 for anything else. */
static int long_arg(PyObject *v, long dflt, long lo, long hi, long *out)
{
    int overflow;
    long x;
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!PyLong_CheckExact(v))
        return -1;
    x = PyLong_AsLongAndOverflow(v, &overflow);
    if (overflow || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

/* A failed call's errno goes to the Python function that the Python method hands
 * its own failures to (it raises, or after EINTR makes the call again, PEP 475);
 * the signal handlers run first, and an exception one raises ends the call here. */
static PyObject *failed(int err, PyObject *handler, const char *format, ...)
{
    va_list va;
    PyObject *args, *r;
    if (err == EINTR && PyErr_CheckSignals() < 0)
        return NULL;
    va_start(va, format);
    args = Py_VaBuildValue(format, va);
    va_end(va);
    if (!args)
        return NULL;
    r = PyObject_CallObject(handler, args);
    Py_DECREF(args);
    return r;
}

/* ---- MessageQueue --------------------------------------------------------------- */

static struct attr queue_id;

static struct method send_m = {NULL, NULL, 4, 4, {"data", "mtype", "block", "timeout"}, {NULL}};
static struct method receive_m = {
    NULL, NULL, 6, 3, {"mtype", "block", "timeout", "except_type", "maxsize", "truncate"}, {NULL}};

static PyObject *queue_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *a[MAX_PARAMS];
    long msqid, mtype;
    int block, err;
    const char *data;
    size_t len;
    if (bind_args(&send_m, args, nargs, kwnames, a) || !a[0] || !PyBytes_CheckExact(a[0]) ||
        long_arg(a[1], 1, 1, LONG_MAX, &mtype) || (block = flag(a[2], 1)) < 0 ||
        (a[3] && a[3] != Py_None) || attr_long(self, &queue_id, 0, INT_MAX, &msqid))
        return fall_back(&send_m, self, args, nargs, kwnames);
    data = PyBytes_AS_STRING(a[0]);
    len = (size_t)PyBytes_GET_SIZE(a[0]);
    err = calls->msgsnd((int)msqid, mtype, data, len, IPC_NOWAIT, -1);
    if (err == EAGAIN && block) {
        Py_BEGIN_ALLOW_THREADS
        err = calls->msgsnd((int)msqid, mtype, data, len, 0, -1);
        Py_END_ALLOW_THREADS
    }
    if (!err)
        Py_RETURN_NONE;
    return failed(err, send_m.failed, "(iilOi)", err, (int)msqid, mtype, a[0],
                  block ? 0 : IPC_NOWAIT);
}

/* A Message: a tuple subclass allocated as tuple.__new__ allocates one. */
static PyObject *message(const struct ipcb_rmsg *m)
{
    PyObject *mtype, *data, *msg;
    if (!(mtype = PyLong_FromLong(m->mtype)))
        return NULL;
    if (!(data = PyBytes_FromStringAndSize(m->mtext, m->len))) {
        Py_DECREF(mtype);
        return NULL;
    }
    if (!(msg = message_type->tp_alloc(message_type, 2))) {
        Py_DECREF(mtype);
        Py_DECREF(data);
        return NULL;
    }
    PyTuple_SET_ITEM(msg, 0, mtype);
    PyTuple_SET_ITEM(msg, 1, data);
    return msg;
}

static PyObject *queue_receive(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *a[MAX_PARAMS], *msg;
    struct ipcb_rmsg *m;
    long msqid, mtype;
    int block, err;
    if (bind_args(&receive_m, args, nargs, kwnames, a) ||
        long_arg(a[0], 0, LONG_MIN, LONG_MAX, &mtype) || (block = flag(a[1], 1)) < 0 ||
        (a[2] && a[2] != Py_None) || flag(a[3], 0) != 0 || (a[4] && a[4] != Py_None) ||
        flag(a[5], 0) != 0 || attr_long(self, &queue_id, 0, INT_MAX, &msqid))
        return fall_back(&receive_m, self, args, nargs, kwnames);
    m = calls->msgrcv((int)msqid, IPCB_ANY_SIZE, mtype, IPC_NOWAIT, -1);
    if (m->err == ENOMSG && block) {
        m->lent = 0;
        Py_BEGIN_ALLOW_THREADS
        m = calls->msgrcv((int)msqid, IPCB_ANY_SIZE, mtype, 0, -1);
        Py_END_ALLOW_THREADS
    }
    /* Holding the GIL from here on, no signal handler can receive on this thread
     * before the buffer is given back. */
    err = m->err;
    msg = err ? NULL : message(m);
    m->lent = 0;
    if (!err)
        return msg;
    return failed(err, receive_m.failed, "(iiliO)", err, (int)msqid, mtype,
                  block ? 0 : IPC_NOWAIT, (PyObject *)message_type);
}

static PyMethodDef queue_methods[] = {
    {"send", (PyCFunction)(void (*)(void))queue_send, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"receive", (PyCFunction)(void (*)(void))queue_receive, METH_FASTCALL | METH_KEYWORDS,
     NULL},
};

/* ---- Semaphore ------------------------------------------------------------------ */

static struct attr sem_id, sem_num;

static struct method acquire_m = {NULL, NULL, 4, 4, {"delta", "undo", "timeout", "block"}, {NULL}};
static struct method release_m = {NULL, NULL, 2, 2, {"delta", "undo"}, {NULL}};
static struct method enter_m = {NULL, NULL, 0, 0, {NULL}, {NULL}};
static struct method exit_m = {NULL, NULL, 3, 3, {"exc_type", "exc", "tb"}, {NULL}};

/* One semop on self: first with IPC_NOWAIT holding the GIL, then, if that finds
 * the value too low and block is set, waiting without it. 0 or the errno. */
static int sem_op(long semid, long num, int op, int undo, int block)
{
    short flg = undo ? SEM_UNDO : 0;
    int err = calls->semop1((int)semid, (unsigned short)num, (short)op,
                            (short)(flg | IPC_NOWAIT), -1);
    if (err == EAGAIN && block) {
        Py_BEGIN_ALLOW_THREADS
        err = calls->semop1((int)semid, (unsigned short)num, (short)op, flg, -1);
        Py_END_ALLOW_THREADS
    }
    return err;
}

static int sem_self(PyObject *self, long *semid, long *num)
{
    return attr_long(self, &sem_id, 0, INT_MAX, semid) ||
           attr_long(self, &sem_num, 0, USHRT_MAX, num);
}

static PyObject *sem_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *a[MAX_PARAMS];
    long delta, semid, num;
    int undo, block, err;
    if (bind_args(&acquire_m, args, nargs, kwnames, a) ||
        long_arg(a[0], 1, 1, SEMVMX, &delta) || (undo = flag(a[1], 0)) < 0 ||
        (a[2] && a[2] != Py_None) || (block = flag(a[3], 1)) < 0 || sem_self(self, &semid, &num))
        return fall_back(&acquire_m, self, args, nargs, kwnames);
    if (!(err = sem_op(semid, num, (int)-delta, undo, block)))
        Py_RETURN_NONE;
    return failed(err, acquire_m.failed, "(iilli)", err, (int)semid, num, -delta,
                  (undo ? SEM_UNDO : 0) | (block ? 0 : IPC_NOWAIT));
}

static PyObject *sem_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *a[MAX_PARAMS];
    long delta, semid, num;
    int undo, err;
    if (bind_args(&release_m, args, nargs, kwnames, a) ||
        long_arg(a[0], 1, 1, SEMVMX, &delta) || (undo = flag(a[1], 0)) < 0 ||
        sem_self(self, &semid, &num))
        return fall_back(&release_m, self, args, nargs, kwnames);
    if (!(err = sem_op(semid, num, (int)delta, undo, 0)))
        Py_RETURN_NONE;
    return failed(err, release_m.failed, "(iilli)", err, (int)semid, num, delta,
                  undo ? SEM_UNDO : 0);
}

static PyObject *sem_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *r;
    long semid, num;
    int err;
    if (nargs || kwnames || sem_self(self, &semid, &num))
        return fall_back(&enter_m, self, args, nargs, kwnames);
    if (!(err = sem_op(semid, num, -1, 1, 1))) {
        Py_INCREF(self);
        return self;
    }
    if (!(r = failed(err, enter_m.failed, "(iilli)", err, (int)semid, num, -1L, SEM_UNDO)))
        return NULL;
    Py_DECREF(r);
    Py_INCREF(self);
    return self;
}

static PyObject *sem_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    PyObject *r;
    long semid, num;
    int err;
    if (kwnames || sem_self(self, &semid, &num))
        return fall_back(&exit_m, self, args, nargs, kwnames);
    if (!(err = sem_op(semid, num, 1, 1, 0)))
        Py_RETURN_NONE;
    if (!(r = failed(err, exit_m.failed, "(iilli)", err, (int)semid, num, 1L, SEM_UNDO)))
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyMethodDef sem_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))sem_acquire, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)(void (*)(void))sem_release, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"__enter__", (PyCFunction)(void (*)(void))sem_enter, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))sem_exit, METH_FASTCALL | METH_KEYWORDS, NULL},
};

/* ---- installing ----------------------------------------------------------------- */

/* Replaces cls.<def->ml_name>, a Python function, by a C method that falls back to
 * it, and hands the errno of a failed call to on_failure. */
static int install(PyObject *cls, PyMethodDef *def, struct method *m, PyObject *on_failure)
{
    PyObject *func = PyDict_GetItemString(((PyTypeObject *)cls)->tp_dict, def->ml_name);
    PyObject *descr, *doc;
    int j;
    if (!func || !PyFunction_Check(func)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a Python function: accelerated already?",
                     ((PyTypeObject *)cls)->tp_name, def->ml_name);
        return -1;
    }
    for (j = 0; j < m->nparams; j++)
        if (!m->names[j] && !(m->names[j] = PyUnicode_InternFromString(m->params[j])))
            return -1;
    /* The Python method's docstring, kept alive by the function held below. */
    doc = ((PyFunctionObject *)func)->func_doc;
    def->ml_doc = doc && PyUnicode_Check(doc) ? PyUnicode_AsUTF8(doc) : NULL;
    if (!def->ml_doc)
        PyErr_Clear();
    if (!(descr = PyDescr_NewMethod((PyTypeObject *)cls, def)))
        return -1;
    Py_INCREF(func);
    Py_XSETREF(m->fallback, func);
    Py_INCREF(on_failure);
    Py_XSETREF(m->failed, on_failure);
    j = PyObject_SetAttrString(cls, def->ml_name, descr);
    Py_DECREF(descr);
    return j;
}

static int is_class(PyObject *cls)
{
    if (PyType_Check(cls))
        return 1;
    PyErr_SetString(PyExc_TypeError, "expected a class");
    return 0;
}

/* Whether an accelerate_* function may go on: bound, and called with n arguments. */
static int ready(Py_ssize_t nargs, Py_ssize_t n, const char *usage)
{
    if (nargs != n) {
        PyErr_SetString(PyExc_TypeError, usage);
        return 0;
    }
    if (!calls) {
        PyErr_SetString(PyExc_RuntimeError, "bind() first");
        return 0;
    }
    return 1;
}

static PyObject *accelerate_queue(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *cls, *msg_cls;
    if (!ready(nargs, 4, "accelerate_queue(MessageQueue, Message, send_failed, receive_failed)") ||
        !is_class(cls = args[0]) || !is_class(msg_cls = args[1]))
        return NULL;
    /* Message must be a tuple of two items and nothing else: message() fills it as one. */
    if (!PyType_IsSubtype((PyTypeObject *)msg_cls, &PyTuple_Type) ||
        ((PyTypeObject *)msg_cls)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "Message must be a tuple subclass without slots");
        return NULL;
    }
    if (attr_find(cls, "_id", &queue_id) || install(cls, &queue_methods[0], &send_m, args[2]) ||
        install(cls, &queue_methods[1], &receive_m, args[3]))
        return NULL;
    Py_INCREF(msg_cls);
    Py_XSETREF(message_type, (PyTypeObject *)msg_cls);
    Py_RETURN_NONE;
}

static PyObject *accelerate_semaphore(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *cls, *f;
    if (!ready(nargs, 2, "accelerate_semaphore(Semaphore, semop_failed)"))
        return NULL;
    f = args[1];
    if (!is_class(cls = args[0]) || attr_find(cls, "_semid", &sem_id) ||
        attr_find(cls, "_num", &sem_num) || install(cls, &sem_methods[0], &acquire_m, f) ||
        install(cls, &sem_methods[1], &release_m, f) || install(cls, &sem_methods[2], &enter_m, f) ||
        install(cls, &sem_methods[3], &exit_m, f))
        return NULL;
    Py_RETURN_NONE;
}

/* bind(address): the shim's table of functions (calls.h), at that address. */
static PyObject *bind(PyObject *mod, PyObject *address)
{
    const struct ipcb_calls_table *t = PyLong_AsVoidPtr(address);
    if (!t)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "no table");
    if (t->size != sizeof *t) {
        PyErr_Format(PyExc_ImportError, "the shim's table of calls has %zu bytes, "
                     "this accelerator was built for %zu", t->size, sizeof *t);
        return NULL;
    }
    calls = t;
    Py_RETURN_NONE;
}

static PyMethodDef module_functions[] = {
    {"bind", bind, METH_O, "bind(address): use the shim's table of calls at that address."},
    {"accelerate_queue", (PyCFunction)(void (*)(void))accelerate_queue, METH_FASTCALL,
     "accelerate_queue(MessageQueue, Message, send_failed, receive_failed): C send and "
     "receive; send_failed(err, msqid, mtype, data, flags) and receive_failed(err, msqid, "
     "msgtyp, flags, Message) take a failed call's errno."},
    {"accelerate_semaphore", (PyCFunction)(void (*)(void))accelerate_semaphore, METH_FASTCALL,
     "accelerate_semaphore(Semaphore, semop_failed): C acquire, release, __enter__, "
     "__exit__; semop_failed(err, semid, num, op, flg) takes a failed call's errno."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ipcbind._accel",
    "C methods for the hottest single calls, beside the cffi shim (src/accel.c).", -1,
    module_functions, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__accel(void)
{
    return PyModule_Create(&module);
}
