"""The pod network and its guards (REALPODS.md, THE NETWORK RULE), and read-only checks of them.

Nothing here sends a packet: set-up writes links, routes, sysctls and iptables rules; every
check reads state (``ip``, ``iptables -S``, sysctls, files). The guards keep all pod traffic on
this machine:

- a host-owned bridge ``rpbr0`` = 10.88.0.1/16; CNI ``isGateway: false``, ``ipMasq: false``,
  the only extra pod route is the service CIDR via the bridge address (no default route);
- ``10.96.0.0/16 dev rpbr0`` on the host (an unmatched ClusterIP ARPs on the bridge, never eth0);
- filter FORWARD policy DROP with one ACCEPT for rpbr0 -> rpbr0, and a mangle backstop
  (KP-GUARD-FWD / KP-GUARD-OUT) that kube-proxy never touches;
- ``net.ipv4.ip_forward=1`` only after all of that has been read back and found right.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "rpbr0"
NODE_IP = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
CNI_NETWORK = "rpnet"
GUARD_FWD = "KP-GUARD-FWD"
GUARD_OUT = "KP-GUARD-OUT"

SYSCTL_FORWARD = "net.ipv4.ip_forward"
SYSCTLS_ZERO = ("net.ipv4.conf.all.route_localnet", "net.ipv6.conf.all.forwarding")


class GuardError(RuntimeError):
    """A guard is missing or wrong: the rig refuses to go on."""


def sh(*args: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def sysctl_get(name: str) -> str:
    return sysctl_path(name).read_text().strip()


def sysctl_set(name: str, value: str) -> None:
    sysctl_path(name).write_text(value + "\n")


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


# ------------------------------------------------------------------------------------------
# set-up and tear-down


def bridge_up() -> None:
    if not bridge_exists():
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = sh("ip", "-4", "-o", "addr", "show", "dev", BRIDGE)
    if f"{NODE_IP}/16" not in addrs:
        sh("ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    if f"{SERVICE_CIDR} dev {BRIDGE}" not in sh("ip", "route", "show", SERVICE_CIDR):
        sh("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE)


def cni_conflist(ipam_dir: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
                },
            }
        ],
    }


def _ipt(table: str, *args: str, v6: bool = False, check: bool = True) -> str:
    return sh("ip6tables" if v6 else "iptables", "-w", "5", "-t", table, *args, check=check)


def _has_rule(table: str, chain: str, *rule: str, v6: bool = False) -> bool:
    r = subprocess.run(
        ["ip6tables" if v6 else "iptables", "-w", "5", "-t", table, "-C", chain, *rule],
        capture_output=True,
    )
    return r.returncode == 0


def _chain_exists(table: str, chain: str, v6: bool = False) -> bool:
    r = subprocess.run(
        ["ip6tables" if v6 else "iptables", "-w", "5", "-t", table, "-S", chain],
        capture_output=True,
    )
    return r.returncode == 0


def guards_up() -> None:
    """Install the forwarding guards (idempotent). Must run before kube-proxy and ip_forward."""
    _ipt("filter", "-P", "FORWARD", "DROP")
    acc = ("-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
    if not _has_rule("filter", "FORWARD", *acc):
        _ipt("filter", "-I", "FORWARD", *acc)
    for chain in (GUARD_FWD, GUARD_OUT):
        if _chain_exists("mangle", chain):
            _ipt("mangle", "-F", chain)
        else:
            _ipt("mangle", "-N", chain)
    _ipt("mangle", "-A", GUARD_FWD, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
    _ipt("mangle", "-A", GUARD_FWD, "-j", "DROP")
    _ipt("mangle", "-A", GUARD_OUT, "-o", BRIDGE, "-j", "RETURN")
    _ipt("mangle", "-A", GUARD_OUT, "-o", "lo", "-j", "RETURN")
    _ipt("mangle", "-A", GUARD_OUT, "-m", "conntrack", "--ctorigdst", SERVICE_CIDR, "-j", "DROP")
    _ipt("mangle", "-A", GUARD_OUT, "-s", POD_CIDR, "-j", "DROP")
    _ipt("mangle", "-A", GUARD_OUT, "-d", SERVICE_CIDR, "-j", "DROP")
    if not _has_rule("mangle", "FORWARD", "-j", GUARD_FWD):
        _ipt("mangle", "-I", "FORWARD", "-j", GUARD_FWD)
    if not _has_rule("mangle", "POSTROUTING", "-j", GUARD_OUT):
        _ipt("mangle", "-I", "POSTROUTING", "-j", GUARD_OUT)


_USER_CHAIN = re.compile(r"^(KUBE-|KP-GUARD-)")


def remove_rules(forward_policy: str = "ACCEPT") -> None:
    """Remove the guards and anything kube-proxy/kubelet left (KUBE-* chains), v4 and v6."""
    for v6 in (False, True):
        tool = "ip6tables" if v6 else "iptables"
        for table in ("filter", "nat", "mangle", "raw"):
            try:
                rules = _ipt(table, "-S", v6=v6).splitlines()
            except RuntimeError:
                continue
            chains = set()
            for line in rules:
                m = re.match(r"^-N (\S+)", line)
                if m and _USER_CHAIN.match(m.group(1)):
                    chains.add(m.group(1))
            # rules in any chain that jump to ours, or our bridge accept
            for line in rules:
                if not line.startswith("-A "):
                    continue
                parts = line.split()
                chain = parts[1]
                if chain in chains:
                    continue
                jump = parts[parts.index("-j") + 1] if "-j" in parts else ""
                ours = jump in chains or _USER_CHAIN.match(jump) is not None
                if (
                    not v6
                    and table == "filter"
                    and chain == "FORWARD"
                    and line == (f"-A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT")
                ):
                    ours = True
                if ours:
                    subprocess.run(
                        [tool, "-w", "5", "-t", table, "-D", *_split_rule(line)[1:]],
                        capture_output=True,
                    )
            for c in chains:
                subprocess.run([tool, "-w", "5", "-t", table, "-F", c], capture_output=True)
            for c in chains:
                subprocess.run([tool, "-w", "5", "-t", table, "-X", c], capture_output=True)
    with contextlib.suppress(RuntimeError):
        _ipt("filter", "-P", "FORWARD", forward_policy)


def _split_rule(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def network_down() -> None:
    """Delete leftover veths on the bridge, the bridge, and our routes (idempotent)."""
    if bridge_exists():
        for dev in Path(f"/sys/class/net/{BRIDGE}/brif").glob("*"):
            subprocess.run(["ip", "link", "del", dev.name], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    for args in (["unreachable", SERVICE_CIDR], [SERVICE_CIDR], [POD_CIDR]):
        while subprocess.run(["ip", "route", "del", *args], capture_output=True).returncode == 0:
            pass


# ------------------------------------------------------------------------------------------
# read-only checks; each returns a list of problems (empty = fine)


@dataclass
class Baseline:
    iptables: str
    ip6tables: str
    bridge_nf_call_iptables: str | None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> Baseline:
        return cls(**json.loads(path.read_text()))

    @classmethod
    def capture(cls) -> Baseline:
        bnf = None
        with contextlib.suppress(OSError):
            bnf = sysctl_get("net.bridge.bridge-nf-call-iptables")
        return cls(sh("iptables-save"), sh("ip6tables-save"), bnf)


def check_preconditions() -> list[str]:
    p = []
    if bridge_exists():
        p.append(f"{BRIDGE} exists: another rig owns the bridge")
    if sysctl_get(SYSCTL_FORWARD) != "0":
        p.append(f"{SYSCTL_FORWARD} is {sysctl_get(SYSCTL_FORWARD)}, want 0")
    return p


def check_bridge() -> list[str]:  # item 3
    out = sh("ip", "-4", "-o", "addr", "show", "dev", BRIDGE, check=False)
    addrs = re.findall(r"inet (\S+)", out)
    return (
        [] if addrs == [f"{NODE_IP}/16"] else [f"{BRIDGE} addresses {addrs}, want [{NODE_IP}/16]"]
    )


def check_service_route() -> list[str]:  # item 4
    p = []
    r = sh("ip", "route", "show", SERVICE_CIDR).strip()
    # "linkdown" only says no pod is attached to the bridge right now: same route
    if [w for w in r.split() if w != "linkdown"] != [SERVICE_CIDR, "dev", BRIDGE, "scope", "link"]:
        p.append(f"route {SERVICE_CIDR}: {r!r}, want '{SERVICE_CIDR} dev {BRIDGE} scope link'")
    g = sh("ip", "route", "get", "10.96.0.1", check=False)
    if f"dev {BRIDGE}" not in g:
        p.append(f"ip route get 10.96.0.1 -> {g.strip()!r}, not via {BRIDGE}")
    return p


def check_filter_forward() -> list[str]:  # item 5
    rules = _ipt("filter", "-S", "FORWARD").splitlines()
    p = []
    if "-P FORWARD DROP" not in rules:
        p.append("filter FORWARD policy is not DROP")
    accepts = [r for r in rules if r.endswith("-j ACCEPT")]
    if accepts != [f"-A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT"]:
        p.append(f"filter FORWARD ACCEPT rules {accepts}, want only {BRIDGE}->{BRIDGE}")
    return p


def _chain_rules(table: str, chain: str) -> list[str]:
    try:
        out = _ipt(table, "-S", chain)
    except RuntimeError:
        return []
    return [r for r in out.splitlines() if r.startswith("-A ")]


def check_mangle() -> list[str]:  # items 6, 7
    p = []
    if f"-A FORWARD -j {GUARD_FWD}" not in _chain_rules("mangle", "FORWARD"):
        p.append(f"mangle FORWARD does not jump to {GUARD_FWD}")
    want_fwd = [
        f"-A {GUARD_FWD} -i {BRIDGE} -o {BRIDGE} -j RETURN",
        f"-A {GUARD_FWD} -j DROP",
    ]
    if _chain_rules("mangle", GUARD_FWD) != want_fwd:
        p.append(f"{GUARD_FWD} is {_chain_rules('mangle', GUARD_FWD)}, want {want_fwd}")
    if f"-A POSTROUTING -j {GUARD_OUT}" not in _chain_rules("mangle", "POSTROUTING"):
        p.append(f"mangle POSTROUTING does not jump to {GUARD_OUT}")
    out = _chain_rules("mangle", GUARD_OUT)
    want = [
        f"-A {GUARD_OUT} -o {BRIDGE} -j RETURN",
        f"-A {GUARD_OUT} -o lo -j RETURN",
        f"-A {GUARD_OUT} -m conntrack --ctorigdst {SERVICE_CIDR} -j DROP",
        f"-A {GUARD_OUT} -s {POD_CIDR} -j DROP",
        f"-A {GUARD_OUT} -d {SERVICE_CIDR} -j DROP",
    ]
    if out != want:
        p.append(f"{GUARD_OUT} is {out}, want {want}")
    return p


def check_guard_counters() -> list[str]:  # item 8
    p = []
    for chain in (GUARD_FWD, GUARD_OUT):
        out = _ipt("mangle", "-L", chain, "-v", "-n", "-x", check=False)
        for line in out.splitlines()[2:]:
            f = line.split()
            if len(f) > 2 and f[2] == "DROP" and f[0] != "0":
                p.append(
                    f"{chain} DROP counter is {f[0]} packets: something tried to leave: {line}"
                )
    return p


def check_cni(conflist: Path) -> list[str]:  # item 9
    d = json.loads(conflist.read_text())
    p = []
    for pl in d["plugins"]:
        if pl.get("type") != "bridge":
            continue
        if pl.get("isGateway") is not False:
            p.append("CNI isGateway is not false")
        if pl.get("ipMasq") is not False:
            p.append("CNI ipMasq is not false")
        if pl.get("ipam", {}).get("routes") != [{"dst": SERVICE_CIDR, "gw": NODE_IP}]:
            p.append(f"CNI ipam.routes {pl.get('ipam', {}).get('routes')}")
    return p


def check_corefile(corefile: Path) -> list[str]:  # item 10
    text = "\n".join(line.split("#", 1)[0] for line in corefile.read_text().splitlines())
    p = []
    for plugin in ("forward", "proxy", "grpc", "etcd"):
        if re.search(rf"(^|\s){plugin}(\s|$)", text):
            p.append(f"Corefile uses plugin {plugin!r} (upstream)")
    for block in re.findall(r"^\s*([^\s{][^{]*)\{", text, re.M):
        zones = block.split()
        if any(z.rstrip(":0123456789") in (".", "") or z.startswith(".:") for z in zones):
            p.append(f"Corefile has a root ('.') server block: {block.strip()}")
    if f"bind {NODE_IP}" not in text:
        p.append(f"Corefile does not bind {NODE_IP}")
    return p


def check_sysctls() -> list[str]:  # item 11
    return [f"{s} = {sysctl_get(s)}, want 0" for s in SYSCTLS_ZERO if sysctl_get(s) != "0"]


def check_nat() -> list[str]:  # items 15, 18
    p = []
    nat = _ipt("nat", "-S", check=False).splitlines()
    net = ipaddress.ip_network(POD_CIDR)
    for line in nat:
        m = re.search(r"--to-destination (\d+\.\d+\.\d+\.\d+)", line)
        if m and ipaddress.ip_address(m.group(1)) not in net:
            p.append(f"DNAT outside {POD_CIDR}: {line}")
    nodeports = [r for r in nat if r.endswith("-j KUBE-NODEPORTS")]
    want = f'-A KUBE-SERVICES -d {NODE_IP}/32 -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    for r in nodeports:
        if f"-d {NODE_IP}/32" not in r:
            p.append(f"NodePort jump not confined to {NODE_IP}: {r}")
    del want
    return p


def service_rule_present(cluster_ip: str) -> bool:  # item 14
    rules = _ipt("nat", "-S", "KUBE-SERVICES", check=False).splitlines()
    return any(f"-d {cluster_ip}/32" in r and "-j KUBE-SVC-" in r for r in rules)


def check_listeners(allowed_pids: dict[int, str] | None = None) -> list[str]:  # item 19
    """TCP/UDP listeners of the rig's processes bind only 127.0.0.1 or 10.88.0.1."""
    out = sh("ss", "-H", "-tulnp", check=False)
    p = []
    names = (
        "kube-apiserver",
        "kubelet",
        "kube-proxy",
        "coredns",
        "containerd",
        "etcd",
        "kube-controller",
        "kube-scheduler",
    )
    for line in out.splitlines():
        f = line.split()
        if len(f) < 7:
            continue
        local, procs = f[4], " ".join(f[6:])
        if not any(f'"{n}' in procs for n in names):
            continue
        host = local.rsplit(":", 1)[0].strip("[]")
        if host.split("%")[0] not in ("127.0.0.1", NODE_IP, "::1"):
            p.append(f"listener on {local}: {procs}")
    return p


def pod_netns_problems(pid: int) -> list[str]:  # item 23 (netlink reads only)
    p = []
    routes = sh("nsenter", "-t", str(pid), "-n", "ip", "route", check=False)
    if any(r.startswith("default") for r in routes.splitlines()):
        p.append(f"pod (pid {pid}) has a default route: {routes}")
    g = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "route", "get", "8.8.8.8"],
        capture_output=True,
        text=True,
    )
    if g.returncode == 0:
        p.append(f"pod (pid {pid}) can route to 8.8.8.8: {g.stdout.strip()}")
    return p


def check_after_teardown(baseline: Baseline | None) -> list[str]:  # items 25, 26, 28
    p = []
    if sysctl_get(SYSCTL_FORWARD) != "0":
        p.append("ip_forward is not 0")
    if bridge_exists():
        p.append(f"{BRIDGE} still exists")
    routes = sh("ip", "route").splitlines()
    for r in routes:
        if "10.88." in r or "10.96." in r:
            p.append(f"route left: {r}")
    veths = sh("ip", "-o", "link", "show", "type", "veth", check=False).strip()
    if veths:
        p.append(f"veths left: {veths}")
    for v6, tool in ((False, "iptables-save"), (True, "ip6tables-save")):
        now = _norm_rules(sh(tool))
        if any("KUBE-" in r or "KP-GUARD" in r for r in now):
            p.append(
                f"{tool}: KUBE-*/KP-GUARD-* rules left: {[r for r in now if 'KUBE' in r or 'KP-GUARD' in r][:5]}"
            )
        if baseline is not None:
            base = _norm_rules(baseline.ip6tables if v6 else baseline.iptables)
            if now != base:
                p.append(
                    f"{tool} differs from the baseline: +{sorted(now - base)[:5]} -{sorted(base - now)[:5]}"
                )
    if baseline is not None and baseline.bridge_nf_call_iptables is not None:
        cur = sysctl_get("net.bridge.bridge-nf-call-iptables")
        if cur != baseline.bridge_nf_call_iptables:
            p.append(f"bridge-nf-call-iptables {cur}, was {baseline.bridge_nf_call_iptables}")
    return p


def _norm_rules(save: str) -> set[str]:
    """iptables-save output without counters, comments, tables and built-in ACCEPT policies."""
    out = set()
    for line in save.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "*", "COMMIT")):
            continue
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy == "ACCEPT" or policy == "-":
                if policy == "-":
                    out.add(f"chain {name}")
                continue
            out.add(f"policy {name} {policy}")
            continue
        out.add(re.sub(r"^\[\d+:\d+\]\s*", "", line))
    return out
