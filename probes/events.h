/* The kernel event records, defined once.
 *
 * Every probe writes one of these structs into its ring buffer. Python never
 * restates them: bcc reads this very definition back from the compiled
 * program (the ctypes class of table.event()), probes/layout.py turns that
 * into the numpy layout the raw batches carry (bus/rawbatch.py).
 * Fields use bcc's u8/u16/u32/u64/s32/char names: table.event() maps those
 * names (not "unsigned char [16]") to ctypes.
 */
#ifndef TCPLAB_EVENTS_H
#define TCPLAB_EVENTS_H

/* TASK_COMM_LEN is an enum in kernel headers: a #define would clash. */
#define TCPLAB_COMM_LEN 16

/* sock:inet_sock_set_state (>= 4.16) or a kprobe on tcp_set_state. */
struct tcp_state_event {
    u64 ts;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC, same as time.monotonic_ns() */
    u64 skaddr;    /* the struct sock's address: the only key stable for a socket's life */
    u32 pid;       /* on-CPU tgid: often a softirq's victim, never trusted as owner */
    u32 tid;
    char comm[TCPLAB_COMM_LEN];
    u16 family;    /* AF_INET (2) or AF_INET6 (10) */
    u16 sport;     /* host order; 0 before the ephemeral port is chosen */
    u16 dport;     /* host order */
    u8 oldstate;   /* include/net/tcp_states.h numbering */
    u8 newstate;
    u8 saddr[16];  /* AF_INET: first 4 bytes */
    u8 daddr[16];
};

/* accept/accept4 at syscall exit. */
struct accept_event {
    u64 ts;          /* at exit */
    u64 dur_ns;      /* exit - enter: how long the caller was inside accept */
    u32 pid;
    u32 tid;
    char comm[TCPLAB_COMM_LEN];
    s32 lfd;         /* the listening fd passed in */
    s32 fd;          /* the new fd, or -1 */
    s32 err;         /* positive errno (EAGAIN, EMFILE, ...) or 0 */
    u16 family;      /* of the peer address read back from the user buffer; 0 if none */
    u16 peer_port;   /* host order */
    u8 peer_addr[16];
    u8 syscall;      /* TCPLAB_SYS_ACCEPT*: -D flags from bus/rawbatch.py ACCEPT_SYSCALLS */
    u8 pad[7];
};

/* epoll_wait/epoll_pwait/epoll_pwait2 at syscall exit. */
struct epoll_call_event {
    u64 ts;          /* at exit */
    u64 dur_ns;      /* time blocked in the call */
    u32 pid;
    u32 tid;
    char comm[TCPLAB_COMM_LEN];
    s32 epfd;
    s32 maxevents;
    s32 timeout_ms;  /* -1 = forever; epoll_pwait2's timespec converted to ms */
    s32 ready;       /* number of ready events, 0 on timeout or error */
    s32 err;         /* positive errno (EINTR, EBADF, ...) or 0 */
    u8 syscall;      /* TCPLAB_SYS_EPOLL_*: -D flags from bus/rawbatch.py EPOLL_SYSCALLS */
    u8 pad[3];
};

/* tcp:tcp_probe, sampled in the kernel (probes/tcp_probe.bpf.c). */
struct tcp_probe_event {
    u64 ts;
    u64 skaddr;    /* the struct sock (tracepoint field from 6.12); 0 before: join by 4-tuple */
    u32 snd_cwnd;  /* segments */
    u32 ssthresh;  /* segments; 0x7fffffff = not set yet (TCP_INFINITE_SSTHRESH) */
    u32 snd_wnd;   /* bytes the peer lets us send (its window, scaled) */
    u32 rcv_wnd;   /* bytes we let the peer send */
    u32 srtt_us;   /* smoothed RTT, microseconds */
    u32 snd_nxt;   /* snd_nxt - snd_una = bytes in flight */
    u32 snd_una;
    u32 hits;      /* tracepoint hits on this socket since its last event, this one included */
    u16 family;    /* AF_INET (2) or AF_INET6 (10) */
    u16 sport;     /* host order, the socket's own port */
    u16 dport;
    u16 data_len;  /* payload of the segment that fired it */
    u8 why;        /* TCPLAB_SAMPLE_*: why this hit became an event */
    u8 pad[7];
    u8 saddr[16];  /* AF_INET: first 4 bytes */
    u8 daddr[16];
};

/* Discrete TCP events (probes/tcp_events.bpf.c): retransmits, congestion
 * state changes, resets sent and received, errors handed to the application. */
struct tcp_sock_event {
    u64 ts;
    u64 skaddr;    /* 0 where the tracepoint has none (inet_sk_error_report; a reset with no socket) */
    u32 pid;       /* on-CPU tgid: mostly a softirq's victim */
    s32 code;      /* per what: new cong state, errno, reset reason, retransmit error */
    u16 family;
    u16 sport;     /* host order, the socket's own port */
    u16 dport;
    u8 what;       /* TCPLAB_EV_*: which tracepoint */
    u8 state;      /* TCP state where the tracepoint gives it, else 0 */
    u16 segs;      /* retransmits: segments in the skb (tcp_skb_pcount), what Tcp RetransSegs adds */
    u8 pad[2];
    u32 total_retrans; /* raw retransmit and cong_state: the socket's own count of segments
                        * retransmitted so far (tcp_sock.total_retrans, tcpi_total_retrans),
                        * read at the hit; 0 on the classic tracepoints (no BTF offsets) */
    u8 saddr[16];
    u8 daddr[16];
};

/* Key of the in-kernel epoll histograms: one log2 slot per pid. */
struct hist_key {
    u32 pid;
    u32 slot;
};

/* connect(2) at syscall exit: a client socket's owner from the kernel alone. */
struct connect_event {
    u64 ts;          /* at exit */
    u64 dur_ns;      /* exit - enter: a blocking connect waits for the handshake */
    u64 skaddr;      /* the socket that went CLOSE -> SYN_SENT inside this call; 0 if none */
    u32 pid;         /* the caller: the socket's owner */
    u32 tid;
    char comm[TCPLAB_COMM_LEN];
    s32 fd;          /* the fd passed in */
    s32 err;         /* positive errno (EINPROGRESS, ECONNREFUSED, EADDRNOTAVAIL, ETIMEDOUT, ...) or 0 */
    u16 family;      /* of the destination sockaddr */
    u16 dport;       /* host order */
    u8 pad[4];
    u8 daddr[16];
};

/* The syscall barrier, per socket fd: kept in the kernel (fdio.bpf.c
 * `socks`, a bulk transfer adds to it and sends nothing) and copied into an
 * fd_event only on EOF, close and errors. */
struct fd_counters {
    u64 skaddr;        /* from sock:sock_{recv,send}_length inside a read/write; 0 until one */
    u64 opened_ts;     /* when accept/connect handed the fd over */
    u64 eof_ts;        /* the first read that returned 0; 0 if none */
    u64 reads;         /* read/readv/recvfrom/recvmsg calls that returned > 0 */
    u64 read_bytes;
    u64 writes;        /* write/writev/sendto/sendmsg calls that returned > 0 */
    u64 write_bytes;
    u32 eagain_reads;  /* calls that returned EAGAIN: nothing to read yet */
    u32 eagain_writes; /* ... the send buffer was full */
    u32 errors;        /* calls that failed otherwise (ECONNRESET, EPIPE, ETIMEDOUT, ...) */
    u8 how;            /* TCPLAB_HOW_*: accept or connect (bus/rawbatch.py FD_HOW) */
    u8 pad[3];
};

/* The same counters flat (numpy layouts have no nested structs), then what
 * happened. */
struct fd_event {
    u64 ts;
    u64 skaddr;
    u64 opened_ts;
    u64 eof_ts;
    u64 reads;
    u64 read_bytes;
    u64 writes;
    u64 write_bytes;
    u32 eagain_reads;
    u32 eagain_writes;
    u32 errors;
    u32 pid;
    u32 tid;
    char comm[TCPLAB_COMM_LEN];
    s32 fd;
    s32 err;           /* positive errno of an error; 0 otherwise */
    u8 kind;           /* TCPLAB_FD_*: eof, close, error (bus/rawbatch.py FD_KINDS) */
    u8 syscall;        /* TCPLAB_IO_*: the call (bus/rawbatch.py IO_SYSCALLS) */
    u8 how;
    u8 pad[5];
};

/* sched_process_fork/exec of a traced process (proc.bpf.c). */
struct proc_event {
    u64 ts;
    u32 pid;       /* the traced process (the parent, for a fork) */
    u32 child;     /* the new task: a process or a thread (user space tells) */
    char comm[TCPLAB_COMM_LEN];  /* the parent's; after exec, the new program's */
    u8 kind;       /* TCPLAB_PROC_*: fork, exec (bus/rawbatch.py PROC_KINDS) */
    u8 pad[7];
};

#endif
