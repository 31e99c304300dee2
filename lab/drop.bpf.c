// Probabilistic drop on a lab link end: the loss of a shaped link where the
// kernel has no netem (CONFIG_NET_SCH_NETEM is off on the 6.18 CI kernel).
//
// Hook: tc clsact ingress of the receiving veth end, cls_bpf in
// direct-action mode (SCHED_CLS, TC_ACT_SHOT drops; clsact since 4.5,
// bpf_get_prandom_u32 since 4.1). Ingress of the receiver, not egress of the
// sender: a drop on the sender's egress is returned to TCP as a local drop
// (NET_XMIT_DROP) and sent again as new, never counted as a retransmission;
// a drop on the way in is a segment lost on the wire.
//
// One program per direction (slot = the sending end), DROP_FN(slot) below,
// all sharing one map, so one compile serves both directions.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

// Drop threshold per direction (DROP_SLOTS entries): a packet is
// dropped when a 32-bit random number is below it, so 0 never drops and
// 2^32 (loss 100%: the peer has vanished) always does.
// Written by lab/shaping.py (set at start and by a phase's `link`), read here.
BPF_ARRAY(drop_threshold, u64, DROP_SLOTS);
// Packets seen and dropped per slot, read by lab/shaping.py for the run's record.
BPF_ARRAY(drop_seen, u64, DROP_SLOTS);
BPF_ARRAY(drop_dropped, u64, DROP_SLOTS);

static __always_inline int decide(int slot)
{
    u64 *threshold = drop_threshold.lookup(&slot);
    u64 *seen = drop_seen.lookup(&slot);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    if (threshold && (u64)bpf_get_prandom_u32() < *threshold) {
        u64 *dropped = drop_dropped.lookup(&slot);
        if (dropped)
            __sync_fetch_and_add(dropped, 1);
        return TC_ACT_SHOT;
    }
    return TC_ACT_OK;
}

#define DROP_FN(n) int drop_##n(struct __sk_buff *skb) { return decide(n); }
DROP_FN(0)
DROP_FN(1)
