/* The syscall barrier: what the application did with each socket fd, in
 * the kernel's numbers (the seed's strace matrix without strace).
 *
 * Hooks, all tracepoints (syscall tracepoints since 4.7 with
 * CONFIG_FTRACE_SYSCALLS; sock_recv_length/sock_send_length since 6.3):
 * - syscalls:sys_exit_accept{,4} and sys_enter_connect: the fds that are
 *   TCP sockets, per process (tgid, fd), and who handed them over. Only
 *   these fds are accounted: every other read and write costs one failed
 *   hash lookup and nothing else.
 * - syscalls:sys_{enter,exit}_{read,readv,recvfrom,recvmsg,write,writev,
 *   sendto,sendmsg,sendfile64}: calls and bytes per fd, EAGAIN counts, the
 *   first read that returned 0 (EOF: the peer closed its end). Counters
 *   stay in the `socks` map; events go out only for EOF and errors, so a
 *   bulk transfer costs map updates, never a ring record per call.
 * - syscalls:sys_enter_close: the application let go of the fd: one event
 *   with the fd's final counters, and the entry is gone. A fd never closed
 *   (the CLOSE_WAIT leak) keeps its entry: user space reads the map.
 * - sock:sock_recv_length / sock_send_length: fire inside the read or write
 *   of a socket, in the caller's context, with the struct sock's address:
 *   the skaddr that ties the fd to the tcp_state probe's transitions,
 *   without reading any struct by offset (the headers here are not the
 *   running kernel's). A non-TCP socket (a UDP connect) leaves the map here.
 *
 * Not seen: fds closed by close_range(), dup2() over them or process exit
 * (their entries stay until LRU eviction), and a child's I/O on fds it
 * inherited (accounted under its own tgid only once it accepts or connects).
 */
#include <linux/socket.h>
#include <uapi/linux/in.h>
#include <uapi/linux/errno.h>
#include "events.h"

struct fd_key {
    u32 tgid;
    s32 fd;
};

/* Socket fds of traced processes: inserted at accept exit and connect
 * enter, counted into by the read/write exits, deleted at close. LRU: fds
 * closed where we cannot see it are evicted, not leaked. */
BPF_TABLE("lru_hash", struct fd_key, struct fd_counters, socks, TCPLAB_FDIO_SOCKS);

struct io_call {
    s32 fd;
    u8 syscall;
    u8 empty;    /* a zero-length read: its 0 is not an EOF */
    u8 need_sk;  /* the fd's skaddr is not known yet: io_sock() fills it */
};

/* Reads and writes in flight on an accounted fd, by thread (pid_tgid):
 * inserted at enter, read and deleted at exit. A plain hash, not LRU: an
 * LRU update takes a list lock on every call, and entries only outlive
 * their call when a thread dies inside it (a full table then skips some
 * calls' counts, never blocks them). */
BPF_HASH(pending, u64, struct io_call, 16384);

static __always_inline void fill(struct fd_event *e, struct fd_counters *c)
{
    e->skaddr = c->skaddr;
    e->opened_ts = c->opened_ts;
    e->eof_ts = c->eof_ts;
    e->reads = c->reads;
    e->read_bytes = c->read_bytes;
    e->writes = c->writes;
    e->write_bytes = c->write_bytes;
    e->eagain_reads = c->eagain_reads;
    e->eagain_writes = c->eagain_writes;
    e->errors = c->errors;
    e->how = c->how;
}

static __always_inline void report(void *ctx, u64 id, s32 fd, u8 kind, u8 syscall, s32 err,
                                   struct fd_counters *c)
{
    struct fd_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = (u32)id;
    e.fd = fd;
    e.kind = kind;
    e.syscall = syscall;
    e.err = err;
    fill(&e, c);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    emit(ctx, &e);
}

static __always_inline void track(s32 fd, u8 how)
{
    u64 id = bpf_get_current_pid_tgid();
    if (fd < 0 || !process_ok(id >> 32))
        return;
    struct fd_key k = {.tgid = id >> 32, .fd = fd};
    struct fd_counters c = {};
    c.opened_ts = bpf_ktime_get_ns();
    c.how = how;
    socks.update(&k, &c);  /* a reused fd number starts afresh */
}

static __always_inline void io_enter(s32 fd, u8 syscall, int empty)
{
    u64 id = bpf_get_current_pid_tgid();
    struct fd_key k = {.tgid = id >> 32, .fd = fd};
    struct fd_counters *c = socks.lookup(&k);
    if (!c)
        return;
    struct io_call call = {.fd = fd, .syscall = syscall, .empty = empty, .need_sk = !c->skaddr};
    pending.update(&id, &call);
}

static __always_inline void io_exit(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct io_call *p = pending.lookup(&id);
    if (!p)
        return;
    struct io_call call = *p;
    pending.delete(&id);
    struct fd_key k = {.tgid = id >> 32, .fd = call.fd};
    struct fd_counters *c = socks.lookup(&k);
    if (!c)
        return;
    int reading = call.syscall < TCPLAB_IO_WRITE;
    if (ret > 0) {
        if (reading) {
            __sync_fetch_and_add(&c->reads, 1);
            __sync_fetch_and_add(&c->read_bytes, ret);
        } else {
            __sync_fetch_and_add(&c->writes, 1);
            __sync_fetch_and_add(&c->write_bytes, ret);
        }
        return;
    }
    if (ret == 0) {
        if (reading && !call.empty && !c->eof_ts) {
            c->eof_ts = bpf_ktime_get_ns();
            report(ctx, id, call.fd, TCPLAB_FD_EOF, call.syscall, 0, c);
        }
        return;
    }
    if (ret == -EAGAIN) {
        if (reading)
            __sync_fetch_and_add(&c->eagain_reads, 1);
        else
            __sync_fetch_and_add(&c->eagain_writes, 1);
        return;
    }
    if (ret == -EINTR)  /* a signal, not the socket's doing */
        return;
    __sync_fetch_and_add(&c->errors, 1);
    report(ctx, id, call.fd, TCPLAB_FD_ERROR, call.syscall, -ret, c);
}

/* Inside a socket read or write: the struct sock behind the fd. */
static __always_inline void io_sock(u64 skaddr, u16 protocol)
{
    u64 id = bpf_get_current_pid_tgid();
    struct io_call *p = pending.lookup(&id);
    if (!p || !p->need_sk)
        return;
    p->need_sk = 0;
    struct fd_key k = {.tgid = id >> 32, .fd = p->fd};
    if (protocol != IPPROTO_TCP) {
        socks.delete(&k);
        return;
    }
    struct fd_counters *c = socks.lookup(&k);
    if (c)
        c->skaddr = skaddr;
}

/* Since 6.3 only (the 6.1 VM of make test-kernels has neither): without
 * them the program must not name their structs, or it does not compile. */
#ifdef TCPLAB_TP_sock_recv_length
int tp_sock_recv_length(struct tracepoint__sock__sock_recv_length *args)
{
    io_sock((u64)args->sk, args->protocol);
    return 0;
}
#endif

#ifdef TCPLAB_TP_sock_send_length
int tp_sock_send_length(struct tracepoint__sock__sock_send_length *args)
{
    io_sock((u64)args->sk, args->protocol);
    return 0;
}
#endif

int tp_exit_accept4(struct tracepoint__syscalls__sys_exit_accept4 *args)
{
    track(args->ret, TCPLAB_HOW_ACCEPT);
    return 0;
}

int tp_exit_accept(struct tracepoint__syscalls__sys_exit_accept *args)
{
    track(args->ret, TCPLAB_HOW_ACCEPT);
    return 0;
}

int tp_enter_connect(struct tracepoint__syscalls__sys_enter_connect *args)
{
    u16 family = 0;
    if (args->uservaddr)
        bpf_probe_read_user(&family, sizeof(family), (void *)args->uservaddr);
    if (family == AF_INET || family == AF_INET6)
        track(args->fd, TCPLAB_HOW_CONNECT);
    return 0;
}

int tp_enter_close(struct tracepoint__syscalls__sys_enter_close *args)
{
    u64 id = bpf_get_current_pid_tgid();
    struct fd_key k = {.tgid = id >> 32, .fd = args->fd};
    struct fd_counters *c = socks.lookup(&k);
    if (!c)
        return 0;
    report(args, id, k.fd, TCPLAB_FD_CLOSE, TCPLAB_IO_CLOSE, 0, c);
    socks.delete(&k);
    return 0;
}

int tp_enter_read(struct tracepoint__syscalls__sys_enter_read *args)
{
    io_enter(args->fd, TCPLAB_IO_READ, args->count == 0);
    return 0;
}

int tp_exit_read(struct tracepoint__syscalls__sys_exit_read *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_readv(struct tracepoint__syscalls__sys_enter_readv *args)
{
    io_enter(args->fd, TCPLAB_IO_READV, args->vlen == 0);
    return 0;
}

int tp_exit_readv(struct tracepoint__syscalls__sys_exit_readv *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_recvfrom(struct tracepoint__syscalls__sys_enter_recvfrom *args)
{
    io_enter(args->fd, TCPLAB_IO_RECVFROM, args->size == 0);
    return 0;
}

int tp_exit_recvfrom(struct tracepoint__syscalls__sys_exit_recvfrom *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_recvmsg(struct tracepoint__syscalls__sys_enter_recvmsg *args)
{
    io_enter(args->fd, TCPLAB_IO_RECVMSG, 0);
    return 0;
}

int tp_exit_recvmsg(struct tracepoint__syscalls__sys_exit_recvmsg *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_write(struct tracepoint__syscalls__sys_enter_write *args)
{
    io_enter(args->fd, TCPLAB_IO_WRITE, 0);
    return 0;
}

int tp_exit_write(struct tracepoint__syscalls__sys_exit_write *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_writev(struct tracepoint__syscalls__sys_enter_writev *args)
{
    io_enter(args->fd, TCPLAB_IO_WRITEV, 0);
    return 0;
}

int tp_exit_writev(struct tracepoint__syscalls__sys_exit_writev *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_sendto(struct tracepoint__syscalls__sys_enter_sendto *args)
{
    io_enter(args->fd, TCPLAB_IO_SENDTO, 0);
    return 0;
}

int tp_exit_sendto(struct tracepoint__syscalls__sys_exit_sendto *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_sendmsg(struct tracepoint__syscalls__sys_enter_sendmsg *args)
{
    io_enter(args->fd, TCPLAB_IO_SENDMSG, 0);
    return 0;
}

int tp_exit_sendmsg(struct tracepoint__syscalls__sys_exit_sendmsg *args)
{
    io_exit(args, args->ret);
    return 0;
}

int tp_enter_sendfile64(struct tracepoint__syscalls__sys_enter_sendfile64 *args)
{
    io_enter(args->out_fd, TCPLAB_IO_SENDFILE, 0);
    return 0;
}

int tp_exit_sendfile64(struct tracepoint__syscalls__sys_exit_sendfile64 *args)
{
    io_exit(args, args->ret);
    return 0;
}
