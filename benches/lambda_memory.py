#!/usr/bin/env python3
"""Peak RSS and CPU seconds of one plugin-api process during the largest
create it accepts: a deflated zip just under KUIPER_MAX_DOWNLOAD_BYTES
(256 MiB), about 2.3:1 like the project's own binaries, from a loopback file
host into a local store. Figures for choosing the Lambda function's MemorySize
(infra/README.md).

    python3 benches/lambda_memory.py target/lambda-x86_64/plugin-api/bootstrap [MB ...]

Each MB given runs the create again with the process held to the CPU share
Lambda gives that memory size (one vCPU at 1,769 MB, proportionally below),
by a CPU cgroup quota (needs root and a writable cgroup v1 `cpu` or v2 tree).
"""
import http.server, json, os, random, re, socket, subprocess, sys, tempfile, threading, time, urllib.request, zipfile

BIN = sys.argv[1]
SIZES = [int(a) for a in sys.argv[2:]]
ZIPPED = 250 << 20
work = tempfile.mkdtemp()

# A real shared object as the plugin's library.
open(f"{work}/p.c", "w").write("int lam(void) { return 1; }\n")
subprocess.run(["cc", "-shared", "-fPIC", "-o", f"{work}/Big.so", f"{work}/p.c"], check=True)

# Compressible payload: shuffled 4 KiB blocks of this machine's binaries.
blocks = []
for d in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"]:
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.path.getsize(p) > 1 << 20:
            data = open(p, "rb").read()
            blocks += [data[i:i + 4096] for i in range(0, len(data) - 4096, 4096)]
        if len(blocks) > 60000:
            break
rng = random.Random(7)
path = f"{work}/big.zip"
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(f"{work}/Big.so", "Big.so")
    with z.open("etc/payload.bin", "w", force_zip64=True) as f:
        while os.path.getsize(path) < ZIPPED - (1 << 20):
            for _ in range(4096):
                f.write(rng.choice(blocks))
zipped = os.path.getsize(path)
inflated = sum(i.file_size for i in zipfile.ZipFile(path).infolist())

class Files(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=work, **k)
    def log_message(self, *a):
        pass
    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service gave up on a download it found too slow
files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
threading.Thread(target=files.serve_forever, daemon=True).start()
fport = files.server_address[1]


def cpu_limit(mb):
    """A cgroup holding its tasks to Lambda's CPU share at `mb` MB; returns
    the file a pid is written to in order to join it."""
    period = 100_000
    quota = period * mb // 1769
    v1 = f"/sys/fs/cgroup/cpu/lambda-{mb}"
    if os.path.isdir("/sys/fs/cgroup/cpu"):
        os.makedirs(v1, exist_ok=True)
        open(f"{v1}/cpu.cfs_period_us", "w").write(str(period))
        open(f"{v1}/cpu.cfs_quota_us", "w").write(str(quota))
        return f"{v1}/cgroup.procs"
    v2 = f"/sys/fs/cgroup/lambda-{mb}"
    os.makedirs(v2, exist_ok=True)
    open(f"{v2}/cpu.max", "w").write(f"{quota} {period}")
    return f"{v2}/cgroup.procs"

def create(store, mb=None):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    env = {"PATH": os.environ["PATH"], "KUIPER_STORE": f"{work}/{store}", "KUIPER_LISTEN": f"127.0.0.1:{port}",
           "KUIPER_ALLOWED_HOSTS": f"127.0.0.1:{fport}", "KUIPER_TMP_DIR": work, "RUST_LOG": "warn",
           # The function's own limits (template.yaml), so a throttled create
           # fails the way it would on Lambda.
           "KUIPER_DOWNLOAD_TIMEOUT_SECS": "20", "KUIPER_READ_TIMEOUT_SECS": "10"}
    procs = cpu_limit(mb) if mb else None
    join = (lambda: open(procs, "w").write(str(os.getpid()))) if procs else None
    api = subprocess.Popen([BIN], env=env, preexec_fn=join)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/ping", timeout=1).read(); break
        except OSError:
            time.sleep(0.05)

    def status():
        st = open(f"/proc/{api.pid}/status").read()
        hwm = int(re.search(r"VmHWM:\s+(\d+)", st).group(1)) / 1024
        f = open(f"/proc/{api.pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        return hwm, cpu
    idle, cpu0 = status()
    t0 = time.time()
    req = urllib.request.Request(base + "/plugins/sinks", method="POST",
                                 data=json.dumps({"name": "big", "file": f"http://127.0.0.1:{fport}/big.zip"}).encode())
    try:
        body = urllib.request.urlopen(req, timeout=600).read().decode()
    except urllib.error.HTTPError as e:
        body = f"{e.code} {e.read().decode()}"
    took = time.time() - t0
    peak, cpu1 = status()
    api.terminate(); api.wait()
    return body, peak, idle, cpu1 - cpu0, took

print(f"zip {zipped / 2**20:.1f} MiB deflated, {inflated / 2**20:.1f} MiB inflated")
body, peak, idle, cpu, took = create("store")
print(f"create: {body!r}")
print(f"peak RSS {peak:.1f} MiB (idle {idle:.1f} MiB); create CPU {cpu:.2f} s, wall {took:.2f} s")
for mb in SIZES:
    body, peak, _, cpu, took = create(f"store-{mb}", mb)
    print(f"at {mb} MB ({mb / 1769:.3f} vCPU): wall {took:.1f} s, CPU {cpu:.2f} s, peak RSS {peak:.1f} MiB: {body!r}")
