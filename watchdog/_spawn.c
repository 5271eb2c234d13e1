/* Start functions on threads of their own, so that the event loop never waits.
 *
 * posix_spawn is clone(CLONE_VM|CLONE_VFORK): the calling thread is suspended
 * until the child has exec'd, and os.posix_spawn holds the GIL all the while. On
 * the event loop that wait was half of the loop's busy time, and Python threads
 * cannot take it away: they hand the GIL back and forth with the loop.
 * Here the loop only queues a job (argv and environment already encoded) and
 * returns; plain C threads, which never take the GIL, make the pipes, spawn,
 * open the pidfd and set the nice value, then queue the result and wake the
 * loop through an eventfd. The loop collects every finished job in one call.
 *
 *   Spawner(threads)        starts the threads
 *   .fileno()               the eventfd: readable when results wait
 *   .submit(token, file, argv, env, combine_output, nice, body)   nice: int or None
 *   .collect()              [(token, errno, pid, stdin_w, stdout_r, pidfd, fed)]
 *   .close()                stops the threads; results not collected are returned
 *
 * Every descriptor is made close-on-exec, so that a child started on one
 * thread never inherits the pipes of another; the function's ends are dup2'd to
 * 0, 1 (and 2), which clears the flag. The gateway's ends are non-blocking. A
 * pidfd of -1 means the kernel has none (the caller watches the pid otherwise).
 * A body given with the start is written by the thread as far as the pipe takes
 * it (`fed` bytes); when that was all of it, stdin is closed (stdin_w is -1).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 16
#define NO_NICE INT_MIN

/* A forked child has the Spawner but not its threads (nor, maybe, a sane lock):
 * every fork makes the Spawners made before it unusable there. */
static unsigned long fork_generation;

static void after_fork_in_child(void) { fork_generation++; }

typedef struct Job {
    struct Job *next;
    PyObject *token; /* owned; touched only with the GIL */
    char *file;      /* every string below: one malloc'd block with the job */
    char **argv;
    char **envp;
    int combine_output;
    int nice;
    /* Owned, or NULL: stdin is left to the caller. The thread reads it without
     * the GIL: bytes never change, and the job holds it until it is collected. */
    PyObject *body;
    Py_ssize_t fed; /* how much of the body is in the pipe */
    int error;
    pid_t pid;
    int stdin_w, stdout_r, pidfd;
} Job;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t wake;
    Job *todo, *todo_tail;
    Job *done, *done_tail;
    int efd;
    int closing; /* under the lock: the threads go once `todo` is empty */
    int closed;  /* under the GIL: no more submits */
    unsigned long generation;
    int nthreads;
    pthread_t threads[MAX_THREADS];
    posix_spawnattr_t attr;
    int attr_ready;
} Spawner;

/* --- the threads: no Python here ------------------------------------------- */

static void close_quietly(int fd) {
    if (fd >= 0) {
        int saved = errno;
        close(fd);
        errno = saved;
    }
}

/* Put as much of the body in the new pipe as it takes without waiting (all of
 * it, unless it is larger than the pipe's 64 KiB); close stdin if that was all.
 * The caller writes the rest, with backpressure and deadlines. */
static void feed(Job *job) {
    const char *data = PyBytes_AS_STRING(job->body);
    Py_ssize_t size = PyBytes_GET_SIZE(job->body);
    while (job->fed < size) {
        ssize_t n = write(job->stdin_w, data + job->fed, (size_t)(size - job->fed));
        if (n > 0) {
            job->fed += n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return; /* full: the rest is the caller's */
        } else {
            break; /* EPIPE: it does not read; as Go, the rest is dropped */
        }
    }
    job->fed = size;
    close(job->stdin_w);
    job->stdin_w = -1;
}

/* Under the lock, when `done` turns non-empty: the loop reads the eventfd before
 * it takes the list, so one write per empty-to-full turn is enough. */
static void wake_loop(Spawner *self) {
    uint64_t one = 1;
    ssize_t ignored = write(self->efd, &one, sizeof one);
    (void)ignored;
}

static void run_job(Spawner *self, Job *job) {
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    posix_spawn_file_actions_t actions;
    int rc;

    job->pid = -1;
    job->stdin_w = job->stdout_r = job->pidfd = -1;
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
        job->error = errno;
        close_quietly(in[0]);
        close_quietly(in[1]);
        return;
    }
    rc = posix_spawn_file_actions_init(&actions);
    if (rc == 0) {
        rc = posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        if (rc == 0)
            rc = posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        if (rc == 0 && job->combine_output)
            rc = posix_spawn_file_actions_adddup2(&actions, out[1], 2);
        if (rc == 0)
            rc = posix_spawnp(&job->pid, job->file, &actions, &self->attr, job->argv,
                              job->envp);
        posix_spawn_file_actions_destroy(&actions);
    }
    close(in[0]);
    close(out[1]);
    if (rc != 0) {
        job->error = rc;
        job->pid = -1;
        close(in[1]);
        close(out[0]);
        return;
    }
    /* posix_spawn cannot set it: set it now, as the program starts (what it
     * forks from here on inherits it). Raising a child's nice needs no
     * privilege; failing to is not worth failing the request for. */
    if (job->nice != NO_NICE)
        (void)setpriority(PRIO_PROCESS, (id_t)job->pid, job->nice);
    /* A new pipe end has no other status flag to keep. */
    (void)fcntl(in[1], F_SETFL, O_NONBLOCK);
    (void)fcntl(out[0], F_SETFL, O_NONBLOCK);
    job->stdin_w = in[1];
    job->stdout_r = out[0];
    if (job->body != NULL)
        feed(job);
#ifdef SYS_pidfd_open
    /* Close-on-exec by default. */
    job->pidfd = (int)syscall(SYS_pidfd_open, job->pid, 0);
    if (job->pidfd < 0)
        job->pidfd = -1;
#endif
}

static void *worker(void *arg) {
    Spawner *self = arg;
    sigset_t all;

    /* Signals are the main thread's business. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&self->lock);
    for (;;) {
        while (self->todo == NULL && !self->closing)
            pthread_cond_wait(&self->wake, &self->lock);
        if (self->todo == NULL)
            break; /* closing, and nothing left to start */
        Job *job = self->todo;
        self->todo = job->next;
        if (self->todo == NULL)
            self->todo_tail = NULL;
        pthread_mutex_unlock(&self->lock);

        run_job(self, job);

        pthread_mutex_lock(&self->lock);
        job->next = NULL;
        int was_empty = self->done == NULL;
        if (was_empty)
            self->done = job;
        else
            self->done_tail->next = job;
        self->done_tail = job;
        if (was_empty)
            wake_loop(self);
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

/* --- the Python side ---------------------------------------------------------- */

static void stop_threads(Spawner *self) {
    int n = self->nthreads;
    self->closed = 1; /* before the GIL is released below: no submit slips in */
    if (n == 0)
        return;
    self->nthreads = 0;
    pthread_mutex_lock(&self->lock);
    self->closing = 1;
    pthread_cond_broadcast(&self->wake);
    pthread_mutex_unlock(&self->lock);
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < n; i++)
        pthread_join(self->threads[i], NULL);
    Py_END_ALLOW_THREADS
}

/* Free jobs and what they hold (with the GIL). */
static void discard(Job *job) {
    while (job != NULL) {
        Job *next = job->next;
        Py_DECREF(job->token);
        Py_XDECREF(job->body);
        free(job);
        job = next;
    }
}

/* Every finished start, as tuples; or NULL (out of memory) with every job put
 * back for a later collect: nothing is lost either way. */
static PyObject *take_done(Spawner *self) {
    Job *first, *job;
    PyObject *results = PyList_New(0);
    if (results == NULL)
        return NULL;
    pthread_mutex_lock(&self->lock);
    first = self->done;
    self->done = self->done_tail = NULL;
    pthread_mutex_unlock(&self->lock);
    for (job = first; job != NULL; job = job->next) {
        PyObject *item = Py_BuildValue("(Oiiiiin)", job->token, job->error, (int)job->pid,
                                       job->stdin_w, job->stdout_r, job->pidfd, job->fed);
        if (item == NULL || PyList_Append(results, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(results);
            pthread_mutex_lock(&self->lock);
            Job *last = first;
            while (last->next != NULL)
                last = last->next;
            last->next = self->done;
            if (self->done == NULL)
                self->done_tail = last;
            self->done = first;
            wake_loop(self);
            pthread_mutex_unlock(&self->lock);
            return NULL;
        }
        Py_DECREF(item);
    }
    discard(first);
    return results;
}

static int Spawner_init(Spawner *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"threads", NULL};
    int threads = 1;
    pthread_attr_t stack;
    sigset_t none, defaults;
    short flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i", kwlist, &threads))
        return -1;
    if (self->nthreads || self->attr_ready || self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Spawner already started");
        return -1;
    }
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be 1 to %d", MAX_THREADS);
        return -1;
    }
    /* Each child leads a new process group, starts with every signal at its
     * default (Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays
     * ignored across exec) and none blocked. Read-only once made: shared. */
    sigemptyset(&none);
    sigfillset(&defaults);
    if (posix_spawnattr_init(&self->attr) != 0 ||
        posix_spawnattr_setflags(&self->attr, flags) != 0 ||
        posix_spawnattr_setpgroup(&self->attr, 0) != 0 ||
        posix_spawnattr_setsigdefault(&self->attr, &defaults) != 0 ||
        posix_spawnattr_setsigmask(&self->attr, &none) != 0) {
        PyErr_SetString(PyExc_OSError, "posix_spawnattr setup failed");
        return -1;
    }
    self->attr_ready = 1;
    self->generation = fork_generation;
    self->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* They call little: glibc's posix_spawn maps its own stack for the child. */
    pthread_attr_init(&stack);
    pthread_attr_setstacksize(&stack, 256 * 1024);
    for (int i = 0; i < threads; i++) {
        int rc = pthread_create(&self->threads[i], &stack, worker, self);
        if (rc != 0) {
            pthread_attr_destroy(&stack);
            stop_threads(self);
            errno = rc;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->nthreads = i + 1;
    }
    pthread_attr_destroy(&stack);
    return 0;
}

static PyObject *Spawner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Spawner *self = (Spawner *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->wake, NULL);
    self->efd = -1;
    return (PyObject *)self;
}

static PyObject *Spawner_close(Spawner *self, PyObject *unused) {
    if (self->generation != fork_generation) {
        /* A forked child's copy: no thread to join, no lock to trust. */
        self->closed = 1;
        self->nthreads = 0;
        return PyList_New(0);
    }
    /* The threads start what is queued before they go, and nothing is queued
     * after `closed`: `todo` is empty from here on. */
    stop_threads(self);
    PyObject *left = take_done(self);
    close_quietly(self->efd);
    self->efd = -1;
    return left;
}

static void Spawner_dealloc(Spawner *self) {
    PyObject *type, *value, *traceback;
    /* Dealloc may run while an exception propagates: keep it. */
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *left = Spawner_close(self, NULL);
    if (left != NULL) {
        /* Nobody collected these: end them rather than leak them. */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(left); i++) {
            PyObject *item = PyList_GET_ITEM(left, i);
            int pid = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 2));
            if (pid > 0) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
            }
            for (int k = 3; k < 6; k++) /* stdin_w, stdout_r, pidfd */
                close_quietly((int)PyLong_AsLong(PyTuple_GET_ITEM(item, k)));
        }
        Py_DECREF(left);
    }
    PyErr_Restore(type, value, traceback);
    if (self->attr_ready)
        posix_spawnattr_destroy(&self->attr);
    if (self->generation == fork_generation) { /* a forked child's copy may be locked */
        pthread_mutex_destroy(&self->lock);
        pthread_cond_destroy(&self->wake);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Not closed, and not inherited across a fork (whose child has no threads). */
static int usable(Spawner *self) {
    if (self->generation != fork_generation) {
        PyErr_SetString(PyExc_RuntimeError, "Spawner made before a fork: not usable here");
        return 0;
    }
    if (self->closed || self->nthreads == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Spawner closed");
        return 0;
    }
    return 1;
}

/* A str or bytes as the bytes exec takes (the file system encoding). ASCII, as
 * nearly every name, value and argument is, is used where it lies; anything
 * else is encoded into a bytes object that `keep` holds until it is copied. */
typedef struct {
    const char *data;
    Py_ssize_t size;
} Text;

static int as_text(PyObject *value, const char *what, PyObject **keep, Text *text) {
    PyObject *bytes;
    if (PyUnicode_Check(value) && PyUnicode_IS_ASCII(value)) {
        text->data = (const char *)PyUnicode_1BYTE_DATA(value);
        text->size = PyUnicode_GET_LENGTH(value);
    } else if (PyBytes_Check(value)) {
        text->data = PyBytes_AS_STRING(value);
        text->size = PyBytes_GET_SIZE(value);
    } else if (PyUnicode_Check(value)) {
        bytes = PyUnicode_EncodeFSDefault(value);
        if (bytes == NULL)
            return -1;
        if (*keep == NULL && (*keep = PyList_New(0)) == NULL) {
            Py_DECREF(bytes);
            return -1;
        }
        int rc = PyList_Append(*keep, bytes);
        Py_DECREF(bytes); /* the list holds it */
        if (rc < 0)
            return -1;
        text->data = PyBytes_AS_STRING(bytes);
        text->size = PyBytes_GET_SIZE(bytes);
    } else {
        PyErr_Format(PyExc_TypeError, "%s must be str or bytes", what);
        return -1;
    }
    if (memchr(text->data, '\0', (size_t)text->size) != NULL) {
        PyErr_Format(PyExc_ValueError, "embedded null byte in %s", what);
        return -1;
    }
    return 0;
}

static PyObject *Spawner_submit(Spawner *self, PyObject *args) {
    PyObject *token, *file, *argv, *env, *body, *nice_obj, *key, *value, *keep = NULL;
    PyObject *result = NULL;
    int combine_output, nice = NO_NICE;
    Py_ssize_t nargs, nenv, ntexts, size, pos = 0, i, k;
    Text *texts = NULL;
    Job *job;
    char *cursor;

    if (!PyArg_ParseTuple(args, "OOO!O!pOO", &token, &file, &PyList_Type, &argv, &PyDict_Type,
                          &env, &combine_output, &nice_obj, &body))
        return NULL;
    if (!usable(self))
        return NULL;
    if (nice_obj != Py_None) {
        long value = PyLong_AsLong(nice_obj);
        if (value == -1 && PyErr_Occurred())
            return NULL;
        if (value < -20 || value > 19) {
            PyErr_SetString(PyExc_ValueError, "nice must be -20 to 19, or None");
            return NULL;
        }
        nice = (int)value;
    }
    if (body != Py_None && !PyBytes_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "body must be bytes or None");
        return NULL;
    }
    nargs = PyList_GET_SIZE(argv);
    nenv = PyDict_GET_SIZE(env);
    if (nargs < 1) {
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        return NULL;
    }
    /* file, argv..., then name and value of each variable */
    ntexts = 1 + nargs + 2 * nenv;
    texts = PyMem_Malloc((size_t)ntexts * sizeof(Text));
    if (texts == NULL)
        return PyErr_NoMemory();
    size = sizeof(Job) + (nargs + 1 + nenv + 1) * sizeof(char *);
    if (as_text(file, "file", &keep, &texts[0]) < 0)
        goto done;
    for (i = 0; i < nargs; i++)
        if (as_text(PyList_GET_ITEM(argv, i), "argv", &keep, &texts[1 + i]) < 0)
            goto done;
    k = 1 + nargs;
    while (PyDict_Next(env, &pos, &key, &value)) {
        if (k + 2 > ntexts) {
            PyErr_SetString(PyExc_RuntimeError, "environment changed while read");
            goto done;
        }
        if (as_text(key, "environment name", &keep, &texts[k]) < 0 ||
            as_text(value, "environment value", &keep, &texts[k + 1]) < 0)
            goto done;
        if (texts[k].size == 0 || memchr(texts[k].data, '=', (size_t)texts[k].size) != NULL) {
            PyErr_SetString(PyExc_ValueError, "illegal environment variable name");
            goto done;
        }
        k += 2;
    }
    for (i = 0; i < ntexts; i++)
        size += texts[i].size + 1;
    /* One block that the thread owns: the job, the pointer arrays, the strings. */
    job = malloc((size_t)size);
    if (job == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(job, 0, sizeof(Job));
    job->argv = (char **)(job + 1);
    job->envp = job->argv + nargs + 1;
    cursor = (char *)(job->envp + nenv + 1);
#define COPY(t) (memcpy(cursor, (t).data, (size_t)(t).size), cursor += (t).size)
    job->file = cursor;
    COPY(texts[0]);
    *cursor++ = '\0';
    for (i = 0; i < nargs; i++) {
        job->argv[i] = cursor;
        COPY(texts[1 + i]);
        *cursor++ = '\0';
    }
    job->argv[nargs] = NULL;
    for (i = 0; i < nenv; i++) {
        job->envp[i] = cursor;
        COPY(texts[1 + nargs + 2 * i]);
        *cursor++ = '=';
        COPY(texts[2 + nargs + 2 * i]);
        *cursor++ = '\0';
    }
    job->envp[nenv] = NULL;
#undef COPY
    job->combine_output = combine_output;
    job->nice = nice;
    Py_INCREF(token);
    job->token = token;
    if (body != Py_None) {
        Py_INCREF(body);
        job->body = body;
    }

    /* usable() held: `closed` is set under the GIL before any thread is told to
     * go, so a thread is there to take this. */
    pthread_mutex_lock(&self->lock);
    if (self->todo_tail == NULL)
        self->todo = job;
    else
        self->todo_tail->next = job;
    self->todo_tail = job;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_Free(texts);
    Py_XDECREF(keep);
    return result;
}

static PyObject *Spawner_collect(Spawner *self, PyObject *unused) {
    uint64_t count;
    if (self->generation != fork_generation)
        return PyList_New(0); /* a forked child's copy: nothing of it is its own */
    /* First the eventfd, then the list: a result queued in between wakes the
     * loop again instead of waiting for the next one. */
    if (self->efd >= 0 && read(self->efd, &count, sizeof count) < 0 && errno != EAGAIN) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return take_done(self);
}

static PyObject *Spawner_fileno(Spawner *self, PyObject *unused) {
    if (self->efd < 0) {
        PyErr_SetString(PyExc_ValueError, "Spawner closed");
        return NULL;
    }
    return PyLong_FromLong(self->efd);
}

static PyMethodDef Spawner_methods[] = {
    {"submit", (PyCFunction)Spawner_submit, METH_VARARGS,
     "submit(token, file, argv, env, combine_output, nice, body): queue a start (nice None: "
     "inherited; body None: stdin left open)"},
    {"collect", (PyCFunction)Spawner_collect, METH_NOARGS,
     "collect() -> [(token, errno, pid, stdin_w, stdout_r, pidfd, fed)] of the finished "
     "starts"},
    {"fileno", (PyCFunction)Spawner_fileno, METH_NOARGS,
     "the eventfd, readable when results wait"},
    {"close", (PyCFunction)Spawner_close, METH_NOARGS,
     "close() -> results not yet collected: stop the threads once what is queued has started"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SpawnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "watchdog._spawn.Spawner",
    .tp_doc = "Starts functions on C threads that never take the GIL.",
    .tp_basicsize = sizeof(Spawner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Spawner_new,
    .tp_init = (initproc)Spawner_init,
    .tp_dealloc = (destructor)Spawner_dealloc,
    .tp_methods = Spawner_methods,
};

/* prctl(PR_SET_CHILD_SUBREAPER): orphans of the functions come back to the gateway to
 * be reaped. Here because the other way, ctypes, was 3% of the gateway's start. */
static PyObject *set_child_subreaper(PyObject *module, PyObject *unused) {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_child_subreaper", set_child_subreaper, METH_NOARGS,
     "Make this process the subreaper of its descendants (Linux)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn", "posix_spawn off the event loop, on C threads.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m;
    if (PyType_Ready(&SpawnerType) < 0)
        return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SpawnerType);
    if (PyModule_AddObject(m, "Spawner", (PyObject *)&SpawnerType) < 0) {
        Py_DECREF(&SpawnerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
