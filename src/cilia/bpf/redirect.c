// cilia eBPF traffic steering: send mesh pods' connections to the proxy without iptables.
//
// Compiled by bcc at agent start. The agent attaches:
//   pod cgroups:    cilia_connect4, cilia_connect6, cilia_sockops
//   proxy cgroups:  cilia_connect4, cilia_connect6, cilia_sockops, cilia_getsockopt
//   pair sockhash:  cilia_sk_msg (only with sockmap acceleration on)
//
// Flow of one redirected connection (client in a mesh pod -> VIP:port):
//   1. connect4 (pod cgroup): VIP:port is a mesh service, the caller is a mesh pod -> rewrite the
//      destination to the pod's proxy (node Envoy or its sidecar) and remember the original
//      destination under the socket cookie.
//   2. sockops TCP_CONNECT (pod cgroup): the local port is known now; move the record from the
//      cookie to the 4-tuple (client addr:port -> proxy addr:port).
//   3. getsockopt(SOL_IP, SO_ORIGINAL_DST) on the proxy's accepted socket (proxy cgroup): answer
//      from the 4-tuple record, so Envoy's original_dst listener filter picks the VIP's chain.
//   4. With sockmap on, both ends enter a sockhash once established and sk_msg splices their
//      payload directly (bpf_msg_redirect_hash), skipping the loopback TCP stack.
// Egress gateway: a node-mode pod's connect to an IPv4 CIDR listed for its cgroup (cilia_egress, a
// longest-prefix-match trie keyed by cgroup id + address) goes to the node proxy the same way.
// Sidecar inbound: a proxy connecting to a sidecar pod's IP:port is sent to that pod's inbound
// capture port (15006), unless the proxy is that pod's own sidecar.
// Node inbound (mesh mTLS): a proxy connecting to a node-mode pod's IP:port is sent to the node
// proxy's inbound listener, unless the socket carries the inbound mark (the listener's own forwards).

#include <uapi/linux/bpf.h>
#include <linux/socket.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/tcp.h>

#define CILIA_MAX_DEPTH 16
#define CILIA_SOL_IP 0
#define CILIA_SO_ORIGINAL_DST 80
#define CILIA_AF_INET 2
#define CILIA_AF_INET6 10
#define CILIA_SOCK_STREAM 1

// Mesh service VIP:port (both network byte order).
struct svc_key {
    u32 ip;
    u16 port;
    u16 pad;
};

// What a connect is rewritten to (network byte order).
struct target {
    u32 ip;
    u16 port;
    u16 pad;
};

// A mesh pod's cgroup: where its outbound connects to mesh VIPs go.
struct pod_val {
    struct target proxy;
    u32 mode;  // 1 = node proxy, 2 = sidecar
    u32 pad;
};

// Sidecar inbound capture: traffic to pod IP (and port, 0 = any) goes to the pod's inbound port,
// except from the pod's own sidecar (cgroup id `owner`).
struct inbound_val {
    struct target to;
    u64 owner;
};

// A connection in client orientation: client ip/port -> proxy ip/port. IPs network order,
// ports host order.
struct tuple {
    u32 sip;
    u32 dip;
    u32 sport;
    u32 dport;
};

struct orig_val {
    u32 ip;     // network order
    u16 port;   // network order
    u16 pad;
};

// Counters, indexed by the CILIA_STAT_* constants (read by the agent for `cilia status`).
#define CILIA_STAT_REDIRECTED 0
#define CILIA_STAT_INBOUND 1
#define CILIA_STAT_ORIGDST_HIT 2
#define CILIA_STAT_ORIGDST_MISS 3
#define CILIA_STAT_SOCKMAP_ADD 4
#define CILIA_STAT_MSG_REDIRECT 5
#define CILIA_STAT_EGRESS 6
#define CILIA_STAT_MAX 8

// Config slots (array map) written by the agent.
#define CILIA_CFG_SOCKMAP 0
#define CILIA_CFG_INBOUND_MARK 1
#define CILIA_CFG_MAX 4

// Egress gateway destinations of one pod cgroup: prefixlen counts the 64 cgroup id bits + the CIDR's.
struct egress_key {
    u32 prefixlen;
    u32 cg_lo;
    u32 cg_hi;
    u32 ip;  // network order
};

BPF_HASH(cilia_svc, struct svc_key, u32, 65536);
BPF_LPM_TRIE(cilia_egress, struct egress_key, u32, 16384);
BPF_HASH(cilia_pods, u64, struct pod_val, 16384);
BPF_HASH(cilia_proxies, u64, u32, 16384);
BPF_HASH(cilia_inbound, struct svc_key, struct inbound_val, 16384);
BPF_TABLE("lru_hash", u64, struct orig_val, cilia_cookie, 65536);
BPF_TABLE("lru_hash", struct tuple, struct orig_val, cilia_origdst, 65536);
BPF_ARRAY(cilia_cfg, u32, CILIA_CFG_MAX);
BPF_PERCPU_ARRAY(cilia_stats, u64, CILIA_STAT_MAX);
BPF_SOCKHASH(cilia_pairs, struct tuple, 65536);

static __always_inline void stat_inc(u32 idx)
{
    u64 *v = cilia_stats.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline u32 cfg_get(u32 idx)
{
    u32 *v = cilia_cfg.lookup(&idx);
    return v ? *v : 0;
}

// The mesh pod entry of the calling task: its cgroup or the nearest registered ancestor (its id in *cg).
static __always_inline struct pod_val *find_pod(u64 *cg)
{
#pragma unroll
    for (int level = CILIA_MAX_DEPTH; level >= 0; level--) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0)
            continue;
        struct pod_val *p = cilia_pods.lookup(&id);
        if (p) {
            *cg = id;
            return p;
        }
    }
    return 0;
}

// The proxy cgroup id of the calling task (0 if the caller is no proxy).
static __always_inline u64 find_proxy(void)
{
#pragma unroll
    for (int level = CILIA_MAX_DEPTH; level >= 0; level--) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0)
            continue;
        if (cilia_proxies.lookup(&id))
            return id;
    }
    return 0;
}

// Decide where an IPv4 TCP connect to ip:port (network order) goes; 0 = leave it alone.
// `mark` is the socket's SO_MARK.
static __always_inline int route_v4(u32 ip, u16 port, u32 mark, struct target *out)
{
    u64 cg = 0;
    struct pod_val *pod = find_pod(&cg);
    if (pod) {
        struct svc_key k = {.ip = ip, .port = port};
        u32 *svc = cilia_svc.lookup(&k);
        if (!svc) {
            if (pod->mode != 1)
                return 0;
            struct egress_key ek = {.prefixlen = 96, .cg_lo = (u32)cg, .cg_hi = (u32)(cg >> 32), .ip = ip};
            if (!cilia_egress.lookup(&ek))
                return 0;
            if (pod->proxy.ip == ip && pod->proxy.port == port)
                return 0;
            *out = pod->proxy;
            stat_inc(CILIA_STAT_EGRESS);
            return 1;
        }
        // Never rewrite a connect that already goes to the proxy.
        if (pod->proxy.ip == ip && pod->proxy.port == port)
            return 0;
        *out = pod->proxy;
        // A Service redirected to a listener of its own (CiliumEnvoyConfig `services`) goes to that
        // port on the node proxy; the value holds it in network order, 0 = the capture port.
        if (pod->mode == 1 && (*svc & 0xffff))
            out->port = (u16)(*svc & 0xffff);
        stat_inc(CILIA_STAT_REDIRECTED);
        return 1;
    }
    u64 proxy = find_proxy();
    if (proxy) {
        struct svc_key k = {.ip = ip, .port = port};
        struct inbound_val *in = cilia_inbound.lookup(&k);
        if (!in) {
            k.port = 0;
            in = cilia_inbound.lookup(&k);
        }
        if (!in || in->owner == proxy)
            return 0;
        u32 inbound_mark = cfg_get(CILIA_CFG_INBOUND_MARK);
        if (inbound_mark && mark == inbound_mark)
            return 0;
        if (in->to.ip == ip && in->to.port == port)
            return 0;
        *out = in->to;
        stat_inc(CILIA_STAT_INBOUND);
        return 1;
    }
    return 0;
}

static __always_inline void remember(void *ctx, u32 ip, u16 port)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct orig_val o = {.ip = ip, .port = port};
    cilia_cookie.update(&cookie, &o);
}

int cilia_connect4(struct bpf_sock_addr *ctx)
{
    if (ctx->type != CILIA_SOCK_STREAM)
        return 1;
    u32 ip = ctx->user_ip4;
    u16 port = (u16)ctx->user_port;
    struct target t = {};
    if (!route_v4(ip, port, ctx->sk->mark, &t))
        return 1;
    remember(ctx, ip, port);
    ctx->user_ip4 = t.ip;
    ctx->user_port = t.port;
    return 1;
}

// Dual-stack sockets reach IPv4 VIPs as ::ffff:a.b.c.d; rewrite those like connect4 does.
int cilia_connect6(struct bpf_sock_addr *ctx)
{
    if (ctx->type != CILIA_SOCK_STREAM)
        return 1;
    if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff))
        return 1;
    u32 ip = ctx->user_ip6[3];
    u16 port = (u16)ctx->user_port;
    struct target t = {};
    if (!route_v4(ip, port, ctx->sk->mark, &t))
        return 1;
    remember(ctx, ip, port);
    ctx->user_ip6[3] = t.ip;
    ctx->user_port = t.port;
    return 1;
}

int cilia_sockops(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
        op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    struct tuple local = {};
    local.sip = skops->local_ip4;
    local.dip = skops->remote_ip4;
    local.sport = skops->local_port;
    local.dport = bpf_ntohl(skops->remote_port);

    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        u64 cookie = bpf_get_socket_cookie(skops);
        struct orig_val *o = cilia_cookie.lookup(&cookie);
        if (!o)
            return 1;
        struct orig_val copy = *o;
        cilia_origdst.update(&local, &copy);
        cilia_cookie.delete(&cookie);
        // Forget the record when this socket closes.
        bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
        return 1;
    }
    if (op == BPF_SOCK_OPS_STATE_CB) {
        if (skops->args[1] == BPF_TCP_CLOSE)
            cilia_origdst.delete(&local);
        return 1;
    }
    if (!cfg_get(CILIA_CFG_SOCKMAP))
        return 1;
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        if (!cilia_origdst.lookup(&local))
            return 1;
    } else {
        struct tuple peer = {.sip = local.dip, .dip = local.sip, .sport = local.dport, .dport = local.sport};
        if (!cilia_origdst.lookup(&peer))
            return 1;
    }
    // (bcc rewrites map method calls only as whole statements.)
    int added = cilia_pairs.sock_hash_update(skops, &local, BPF_NOEXIST);
    if (added == 0)
        stat_inc(CILIA_STAT_SOCKMAP_ADD);
    return 1;
}

int cilia_sk_msg(struct sk_msg_md *msg)
{
    struct tuple peer = {};
    peer.sip = msg->remote_ip4;
    peer.dip = msg->local_ip4;
    peer.sport = bpf_ntohl(msg->remote_port);
    peer.dport = msg->local_port;
    // On failure (peer not in the map yet) the message takes the normal TCP path.
    int verdict = cilia_pairs.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
    if (verdict == SK_PASS)
        stat_inc(CILIA_STAT_MSG_REDIRECT);
    return SK_PASS;
}

int cilia_getsockopt(struct bpf_sockopt *ctx)
{
    if (ctx->optname != CILIA_SO_ORIGINAL_DST)
        return 1;
    if (ctx->level != CILIA_SOL_IP)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    // The accepted socket sees the client as its peer: build the key in client orientation.
    struct tuple key = {};
    key.sip = sk->dst_ip4;
    key.dip = sk->src_ip4;
    key.sport = bpf_ntohs(sk->dst_port);
    key.dport = sk->src_port;
    struct orig_val *o = cilia_origdst.lookup(&key);
    if (!o) {
        stat_inc(CILIA_STAT_ORIGDST_MISS);
        return 1;
    }
    struct sockaddr_in *sa = ctx->optval;
    if ((void *)(sa + 1) > ctx->optval_end)
        return 1;
    sa->sin_family = CILIA_AF_INET;
    sa->sin_port = o->port;
    sa->sin_addr.s_addr = o->ip;
    __builtin_memset(sa->sin_zero, 0, sizeof(sa->sin_zero));
    ctx->optlen = sizeof(*sa);
    // Keep the two 32-bit context stores apart: the verifier rejects a merged 64-bit store.
    asm volatile("" ::: "memory");
    ctx->retval = 0;
    stat_inc(CILIA_STAT_ORIGDST_HIT);
    return 1;
}
