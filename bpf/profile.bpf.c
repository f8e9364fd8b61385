// antiprof's on-CPU sampler, compiled by BCC (in a short-lived child process) with -D options
// from antiprof_core.sources.bpf.program; the agent attaches it and reads its maps itself.
//
// A perf_event program on the software CPU clock, attached on every online CPU. Each sample
// is keyed by {tgid, tid, cpu, user stack, kernel stack, comm} and counted in the kernel
// (aggregate mode) or sent through a ring buffer with its ktime (trace mode).
//
// Stacks are stored in hash maps keyed by a 64-bit hash of their addresses, not in BPF stack
// trace maps: a hash map chains its buckets, so two stacks never fight for one bucket (a stack
// trace map drops the second stack of a bucket, which lost stacks even on idle hosts), and a
// hash map can be read and emptied with one batch syscall per few hundred stacks.
//
// Two sets of maps (counts + stacks + counters) are switched by the one-slot array
// `active_set`: user space flips it, waits for programs already running to finish, and then
// drains the set the kernel no longer writes. The program reads the slot once per sample, so
// a sample's counters, count and stacks always land in the same set.
//
// Only BPF helpers and uapi structs: no kernel struct field is read.
//
// Options (all given with -D): MAX_STACK_DEPTH, MAX_STACKS, MAX_COUNTS, MAX_PIDS,
// RINGBUF_PAGES, FILTER_PIDS, KERNEL_STACKS, USER_STACKS, INCLUDE_IDLE, TRACE_MODE.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include <linux/sched.h>

// Counter slots, per set, per CPU. Keep in sync with COUNTER_NAMES in antiprof_core/sources/bpf/program.py.
enum counter {
    SAMPLES_SEEN = 0,
    SAMPLES_LOST,          // counts map full, or ring buffer full in trace mode
    USER_NOT_PRESENT,      // -EFAULT: no user stack (kernel thread)
    USER_COLLISION,        // never since stacks are hashed into a hash map; kept so the slots stay put
    USER_MAP_FULL,         // the stacks map is full
    USER_OTHER,
    KERNEL_NOT_PRESENT,    // -EFAULT: the sample hit user mode
    KERNEL_COLLISION,
    KERNEL_MAP_FULL,
    KERNEL_OTHER,
    COUNTS_MAP_FULL,
    COUNTER_SLOTS,
};

// 48 bytes, no implicit padding: the key is compared bytewise by the hash map.
struct sample_key {
    u32 tgid;
    u32 tid;
    u32 cpu;
    u32 pad;
    u64 user_stack;        // hash of the user stack in this set's stacks map; 0: none
    u64 kernel_stack;      // the same for the kernel stack
    char comm[TASK_COMM_LEN];
};

struct sample_event {
    u64 ktime_ns;
    u32 set;
    u32 pad;
    struct sample_key key;
};

struct stack_value {
    u32 depth;             // frames used in ip[]
    u32 pad;
    u64 ip[MAX_STACK_DEPTH];
};

BPF_ARRAY(active_set, u32, 1);
BPF_PERCPU_ARRAY(counters, u64, 2 * COUNTER_SLOTS);

BPF_HASH(stacks0, u64, struct stack_value, MAX_STACKS);
BPF_HASH(stacks1, u64, struct stack_value, MAX_STACKS);
BPF_PERCPU_ARRAY(stack_scratch, struct stack_value, 1);  // too big for the 512-byte BPF stack

#if TRACE_MODE
BPF_RINGBUF_OUTPUT(sample_events, RINGBUF_PAGES);
#else
BPF_HASH(counts0, struct sample_key, u64, MAX_COUNTS);
BPF_HASH(counts1, struct sample_key, u64, MAX_COUNTS);
#endif

#if FILTER_PIDS
BPF_HASH(pid_filter, u32, u8, MAX_PIDS);
#endif

// Processes seen since user space last forgot them: the first sample of a new tgid is
// announced at once, so its /proc/PID/maps can be read before it has a chance to exit.
BPF_TABLE("lru_hash", u32, u8, known_tgids, MAX_PIDS);
BPF_RINGBUF_OUTPUT(new_tgids, 4);

static __always_inline void bump(u32 set, u32 slot) {
    u32 index = set * COUNTER_SLOTS + slot;
    u64 *value = counters.lookup(&index);
    if (value)
        (*value)++;
}

static __always_inline void count_stack_error(u32 set, long error, u32 base) {
    if (error == -EFAULT || error == 0)
        bump(set, base);
    else if (error == -E2BIG || error == -ENOMEM)
        bump(set, base + 2);
    else
        bump(set, base + 3);
}

// Stores the current user or kernel stack in the set's stacks map; returns its hash, 0 if none.
static __always_inline u64 store_stack(struct bpf_perf_event_data *ctx, u32 set, u64 flags, u32 error_base) {
    u32 zero = 0;
    struct stack_value *stack = stack_scratch.lookup(&zero);
    if (!stack)
        return 0;
    long size = bpf_get_stack(ctx, stack->ip, sizeof(stack->ip), flags);
    if (size <= 0) {
        count_stack_error(set, size, error_base);
        return 0;
    }
    u32 depth = size / sizeof(u64);
    stack->depth = depth;
    stack->pad = 0;
    u64 hash = 0x9e3779b97f4a7c15ULL ^ flags ^ depth;
    // a bounded loop (kernel 5.3+; the ring buffers already need 5.8)
    for (u32 i = 0; i < MAX_STACK_DEPTH; i++) {
        if (i >= depth)
            break;
        hash = (hash ^ stack->ip[i]) * 0xff51afd7ed558ccdULL;
        hash ^= hash >> 32;
    }
    if (hash == 0)
        hash = 1;
    if (set ? stacks1.lookup(&hash) : stacks0.lookup(&hash))
        return hash;
    long error = set ? stacks1.insert(&hash, stack) : stacks0.insert(&hash, stack);
    if (error && error != -EEXIST) {  // -EEXIST: another CPU stored the same stack meanwhile
        count_stack_error(set, error, error_base);
        return 0;
    }
    return hash;
}

int on_sample(struct bpf_perf_event_data *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;

    if (!INCLUDE_IDLE && tid == 0)
        return 0;
#if FILTER_PIDS
    if (!pid_filter.lookup(&tgid))
        return 0;
#endif

    u32 zero = 0;
    u32 *slot = active_set.lookup(&zero);
    u32 set = (slot && *slot) ? 1 : 0;
    bump(set, SAMPLES_SEEN);

    // Look up before inserting: an LRU insert takes a free node first, which costs even when
    // the key is already there.
    if (tgid != 0 && !known_tgids.lookup(&tgid)) {
        u8 yes = 1;
        if (known_tgids.insert(&tgid, &yes) == 0)
            new_tgids.ringbuf_output(&tgid, sizeof(tgid), 0);
    }

    struct sample_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.tgid = tgid;
    key.tid = tid;
    key.cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
#if USER_STACKS
    key.user_stack = store_stack(ctx, set, BPF_F_USER_STACK, USER_NOT_PRESENT);
#endif
#if KERNEL_STACKS
    key.kernel_stack = store_stack(ctx, set, 0, KERNEL_NOT_PRESENT);
#endif

#if TRACE_MODE
    struct sample_event *event = sample_events.ringbuf_reserve(sizeof(struct sample_event));
    if (!event) {
        bump(set, SAMPLES_LOST);
        return 0;
    }
    event->ktime_ns = bpf_ktime_get_ns();
    event->set = set;
    event->pad = 0;
    event->key = key;
    sample_events.ringbuf_submit(event, 0);
#else
    u64 one = 1;
    u64 *count = set ? counts1.lookup(&key) : counts0.lookup(&key);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else {
        int error = set ? counts1.insert(&key, &one) : counts0.insert(&key, &one);
        if (error) {
            // another CPU may have inserted the same key meanwhile
            count = set ? counts1.lookup(&key) : counts0.lookup(&key);
            if (count) {
                __sync_fetch_and_add(count, 1);
            } else {
                bump(set, COUNTS_MAP_FULL);
                bump(set, SAMPLES_LOST);
            }
        }
    }
#endif
    return 0;
}
