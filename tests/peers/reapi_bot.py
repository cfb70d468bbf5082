#!/usr/bin/env python3
"""A small, real REAPI bot for BuildGrid, for vx's remote-execution tests.

BuildGrid 0.4.4 (PyPI) is a scheduler only: it ships no bot (`bgd bot` does not
exist; its bot is buildbox-worker, a C++ program on neither PyPI nor Debian). This
script is the worker side instead. It speaks BuildGrid's Bots API
(google.devtools.remoteworkers.v1test2) and REAPI v2 CAS/ByteStream with the
protobuf modules and gRPC stubs that ship inside the `buildgrid` package:

  CreateBotSession (bot_id, device properties such as OSFamily=linux), then an
  UpdateBotSession loop. For each lease: the Action (the payload is an Action or
  its Digest), its Command and input root come from the CAS; the tree is written
  into a fresh temp dir (executables 0755, symlinks kept); the output paths'
  parent dirs are made; `Command.arguments` run in `working_directory` with
  exactly `Command.environment_variables` (plus the bot's own PATH, and nothing
  else, when the command sets no PATH, so that `sh` is found); `Action.timeout`
  kills the process group (DEADLINE_EXCEEDED); stdout/stderr are captured; the
  outputs (`output_paths`, or legacy `output_files`/`output_directories`: files,
  directories as `Tree`s, symlinks) are uploaded (FindMissingBlobs, then
  BatchUpdateBlobs, or ByteStream Write for big blobs) and the lease completes
  with an ActionResult whose execution_metadata.worker is the bot id. A lease the
  server cancels (BuildGrid drops it from the session) has its process group
  killed. SIGTERM/SIGINT: running commands are killed, the bot exits 0.

Deliberately not done: sandboxing (a temp dir is all the isolation there is; the
command runs as the bot's user and sees the whole machine), more than one lease
at a time per bot (start several bots), caching of inputs between leases,
LogStream, and any digest function but SHA-256. Blobs are held in memory.

Usage: reapi_bot.py --remote 127.0.0.1:PORT [--instance NAME] [--bot-id ID]
                    [--property KEY=VALUE ...]
"""
import argparse, hashlib, os, signal, stat, subprocess, sys, tempfile, threading, time, uuid
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from buildgrid._protos.google.rpc import code_pb2, status_pb2

BATCH = 1 << 20  # blobs at or over this size go through ByteStream; batches stay under it
CHUNK = 1 << 20


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} reapi_bot: {msg}", file=sys.stderr, flush=True)


def digest_of(data):
    return re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def now():
    t = Timestamp()
    t.GetCurrentTime()
    return t


def safe_name(name):
    if not name or name in (".", "..") or "/" in name:
        raise ValueError(f"bad name in a Directory: {name!r}")
    return name


def safe_rel(path):
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts:
        raise ValueError(f"path escapes the input root: {path!r}")
    return os.path.join(*parts) if parts else ""


class Cas:
    """CAS reads and writes for one instance, SHA-256 checked."""

    def __init__(self, channel, instance):
        self.cas = re_grpc.ContentAddressableStorageStub(channel)
        self.bs = bytestream_pb2_grpc.ByteStreamStub(channel)
        self.instance = instance

    def _res(self, *parts):
        return "/".join(p for p in (self.instance, *parts) if p)

    def read(self, digests):
        """{hash: bytes} for `digests`; a missing or corrupt blob is an error."""
        want = {d.hash: d for d in digests}
        out, batch, size = {}, [], 0
        for d in want.values():
            if d.size_bytes >= BATCH:
                name = self._res("blobs", d.hash, str(d.size_bytes))
                out[d.hash] = b"".join(r.data for r in self.bs.Read(bytestream_pb2.ReadRequest(resource_name=name)))
                continue
            if size + d.size_bytes > BATCH:
                out.update(self._batch_read(batch))
                batch, size = [], 0
            batch.append(d)
            size += d.size_bytes
        out.update(self._batch_read(batch))
        for h, data in out.items():
            if digest_of(data) != want[h]:
                raise ValueError(f"blob {h} is corrupt or truncated")
        return out

    def _batch_read(self, digests):
        if not digests:
            return {}
        resp = self.cas.BatchReadBlobs(re.BatchReadBlobsRequest(instance_name=self.instance, digests=digests))
        got = {}
        for r in resp.responses:
            if r.status.code != code_pb2.OK:
                raise LookupError(f"blob {r.digest.hash}/{r.digest.size_bytes}: {r.status.message or r.status.code}")
            got[r.digest.hash] = r.data
        return got

    def read_message(self, digest, msg):
        msg.ParseFromString(self.read([digest])[digest.hash])
        return msg

    def write(self, blobs):
        """Uploads {hash: (digest, bytes)} that the server is missing."""
        if not blobs:
            return
        missing = self.cas.FindMissingBlobs(re.FindMissingBlobsRequest(
            instance_name=self.instance, blob_digests=[d for d, _ in blobs.values()])).missing_blob_digests
        batch, size = [], 0
        for d in missing:
            data = blobs[d.hash][1]
            if d.size_bytes >= BATCH:
                self._stream_write(d, data)
                continue
            if size + d.size_bytes > BATCH:
                self._batch_write(batch)
                batch, size = [], 0
            batch.append(re.BatchUpdateBlobsRequest.Request(digest=d, data=data))
            size += d.size_bytes
        self._batch_write(batch)

    def _batch_write(self, reqs):
        if not reqs:
            return
        resp = self.cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(instance_name=self.instance, requests=reqs))
        bad = [r for r in resp.responses if r.status.code != code_pb2.OK]
        if bad:
            raise IOError(f"upload of {bad[0].digest.hash} refused: {bad[0].status.message}")

    def _stream_write(self, d, data):
        name = self._res("uploads", str(uuid.uuid4()), "blobs", d.hash, str(d.size_bytes))

        def reqs():
            for off in range(0, len(data), CHUNK):
                end = min(off + CHUNK, len(data))
                yield bytestream_pb2.WriteRequest(resource_name=name if off == 0 else "", write_offset=off,
                                                  finish_write=end == len(data), data=data[off:end])
        self.bs.Write(reqs())


def materialize(cas, root_digest, path):
    """Writes the Directory tree `root_digest` into the (existing) dir `path`."""
    level = [(root_digest, path)]
    while level:
        dirs = cas.read([d for d, _ in level])
        nxt, files = [], []
        for d, at in level:
            node = re.Directory.FromString(dirs[d.hash])
            for f in node.files:
                files.append((f, os.path.join(at, safe_name(f.name))))
            for s in node.symlinks:
                os.symlink(s.target, os.path.join(at, safe_name(s.name)))
            for sub in node.directories:
                os.mkdir(os.path.join(at, safe_name(sub.name)))
                nxt.append((sub.digest, os.path.join(at, sub.name)))
        blobs = cas.read([f.digest for f, _ in files])
        for f, dest in files:
            with open(dest, "wb") as out:
                out.write(blobs[f.digest.hash])
            mode = f.node_properties.unix_mode.value if f.node_properties.HasField("unix_mode") else None
            os.chmod(dest, mode if mode is not None else (0o755 if f.is_executable else 0o644))
        level = nxt


class Outputs:
    """Collects outputs into ActionResult fields and the blobs to upload."""

    def __init__(self, modes):
        self.blobs, self.modes = {}, modes

    def blob(self, data):
        d = digest_of(data)
        self.blobs[d.hash] = (d, data)
        return d

    def _props(self, st):
        p = re.NodeProperties()
        if self.modes:
            p.unix_mode.value = stat.S_IMODE(st.st_mode)
        return p

    def file(self, full, rel):
        st = os.stat(full)
        with open(full, "rb") as f:
            d = self.blob(f.read())
        return re.OutputFile(path=rel, digest=d, is_executable=bool(st.st_mode & 0o111),
                             node_properties=self._props(st))

    def directory(self, full):
        """(Directory, [descendant Directories]) of the tree at `full`."""
        node, children = re.Directory(), []
        for name in sorted(os.listdir(full)):
            p = os.path.join(full, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                node.symlinks.add(name=name, target=os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                sub, subs = self.directory(p)
                node.directories.add(name=name, digest=self.blob(sub.SerializeToString(deterministic=True)))
                children += [sub] + subs
            elif stat.S_ISREG(st.st_mode):
                f = self.file(p, name)
                node.files.add(name=name, digest=f.digest, is_executable=f.is_executable,
                               node_properties=f.node_properties)
        return node, children

    def collect(self, result, wd, cmd):
        legacy = not cmd.output_paths
        paths = list(cmd.output_paths) or list(cmd.output_files) + list(cmd.output_directories)
        for rel in paths:
            full = os.path.join(wd, safe_rel(rel))
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                link = re.OutputSymlink(path=rel, target=os.readlink(full))
                if not legacy:
                    result.output_symlinks.append(link)
                elif rel in cmd.output_files:
                    result.output_file_symlinks.append(link)
                else:
                    result.output_directory_symlinks.append(link)
            elif stat.S_ISDIR(st.st_mode):
                root, children = self.directory(full)
                tree = re.Tree(root=root, children=children)
                result.output_directories.add(path=rel, tree_digest=self.blob(tree.SerializeToString(deterministic=True)))
            elif stat.S_ISREG(st.st_mode):
                result.output_files.append(self.file(full, rel))


class Job(threading.Thread):
    """Runs one lease; `cancel()` kills its process group."""

    def __init__(self, bot, lease):
        super().__init__(daemon=True)
        self.bot, self.lease_id, self.payload = bot, lease.id, lease.payload
        self.proc, self.cancelled, self.status, self.result = None, False, None, None
        self.lock = threading.Lock()

    def cancel(self):
        with self.lock:
            self.cancelled = True
            if self.proc and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def run(self):
        try:
            self.result, code, msg = self.execute()
        except Exception as e:  # a broken action or CAS: the lease fails, the bot goes on
            self.result, code, msg = re.ActionResult(), code_pb2.FAILED_PRECONDITION, f"{type(e).__name__}: {e}"
        self.status = status_pb2.Status(code=code, message=msg)
        log(f"lease {self.lease_id} finished: status={code_pb2.Code.Name(code)} exit_code={self.result.exit_code} {msg}")

    def execute(self):
        cas, bot = self.bot.cas, self.bot
        md = re.ExecutedActionMetadata(worker=bot.bot_id, worker_start_timestamp=now(), input_fetch_start_timestamp=now())
        if self.payload.Is(re.Action.DESCRIPTOR):
            action = re.Action()
            self.payload.Unpack(action)
        else:
            digest = re.Digest()
            self.payload.Unpack(digest)
            action = cas.read_message(digest, re.Action())
        cmd = cas.read_message(action.command_digest, re.Command())
        with tempfile.TemporaryDirectory(prefix="reapi-bot-") as tmp:
            root = os.path.join(tmp, "root")
            os.mkdir(root)
            materialize(cas, action.input_root_digest, root)
            wd = os.path.join(root, safe_rel(cmd.working_directory))
            os.makedirs(wd, exist_ok=True)
            for rel in list(cmd.output_paths) + list(cmd.output_files) + list(cmd.output_directories):
                os.makedirs(os.path.dirname(os.path.join(wd, safe_rel(rel))), exist_ok=True)
            md.input_fetch_completed_timestamp.CopyFrom(now())
            env = {v.name: v.value for v in cmd.environment_variables}
            if "PATH" not in env:
                env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
            log(f"lease {self.lease_id}: running {list(cmd.arguments)!r} in {cmd.working_directory or '.'}")
            timeout = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") else None
            code, msg = code_pb2.OK, ""
            md.execution_start_timestamp.CopyFrom(now())
            with open(os.path.join(tmp, "stdout"), "wb+") as out, open(os.path.join(tmp, "stderr"), "wb+") as err:
                with self.lock:
                    if self.cancelled:
                        raise RuntimeError("cancelled before it started")
                    try:
                        self.proc = subprocess.Popen(list(cmd.arguments), cwd=wd, env=env, stdin=subprocess.DEVNULL,
                                                     stdout=out, stderr=err, start_new_session=True)
                    except OSError as e:  # not found / not executable: a failed action, not a bot error
                        raise ValueError(f"cannot start {cmd.arguments[0] if cmd.arguments else '(no arguments)'}: {e}")
                try:
                    exit_code = self.proc.wait(timeout=timeout or None)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    exit_code = self.proc.wait()
                    code, msg = code_pb2.DEADLINE_EXCEEDED, f"timed out after {timeout:g}s"
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers the command left behind
                except ProcessLookupError:
                    pass
                if exit_code < 0:  # killed by a signal: reported as a shell would
                    exit_code = 128 - exit_code
                md.execution_completed_timestamp.CopyFrom(now())
                md.output_upload_start_timestamp.CopyFrom(now())
                outputs = Outputs("unix_mode" in cmd.output_node_properties)
                result = re.ActionResult(exit_code=exit_code)
                out.seek(0)
                err.seek(0)
                result.stdout_digest.CopyFrom(outputs.blob(out.read()))
                result.stderr_digest.CopyFrom(outputs.blob(err.read()))
            outputs.collect(result, wd, cmd)
            cas.write(outputs.blobs)
        md.output_upload_completed_timestamp.CopyFrom(now())
        md.worker_completed_timestamp.CopyFrom(now())
        result.execution_metadata.CopyFrom(md)
        return result, code, msg


class Bot:
    def __init__(self, args):
        self.channel = grpc.insecure_channel(args.remote)
        self.bots = bots_pb2_grpc.BotsStub(self.channel)
        self.cas = Cas(self.channel, args.instance)
        self.bot_id, self.instance = args.bot_id, args.instance
        self.props = [p.split("=", 1) for p in args.property]
        self.jobs, self.stop = {}, threading.Event()

    def call(self, method, req, timeout):
        """One RPC, abandoned (None) when the bot is told to stop."""
        fut = method.future(req, timeout=timeout)
        while not fut.done():
            if self.stop.wait(0.1):
                fut.cancel()
                return None
        return fut.result()

    def new_session(self):
        device = worker_pb2.Device(handle=self.bot_id)
        for k, v in self.props:
            device.properties.add(key=k, value=v)
        session = bots_pb2.BotSession(bot_id=self.bot_id, status=bots_pb2.OK,
                                      worker=worker_pb2.Worker(devices=[device]))
        return self.call(self.bots.CreateBotSession, bots_pb2.CreateBotSessionRequest(
            parent=self.instance, bot_session=session), 3)  # under 3.75 s: BuildGrid answers at once

    def run(self):
        session = None
        while not self.stop.is_set():
            try:
                if session is None:
                    session = self.new_session()
                    if session is None:
                        break
                    log(f"bot session {session.name} created (bot_id={self.bot_id}, properties={self.props})")
                else:
                    for lease in session.leases:
                        job = self.jobs.get(lease.id)
                        if job is not None and not job.is_alive() and job.status is not None:
                            lease.state = bots_pb2.LeaseState.COMPLETED
                            lease.result.Pack(job.result)
                            lease.status.CopyFrom(job.status)
                    busy = any(j.is_alive() for j in self.jobs.values())
                    sent = {l.id: l.state for l in session.leases}
                    new = self.call(self.bots.UpdateBotSession, bots_pb2.UpdateBotSessionRequest(
                        name=session.name, bot_session=session), 5 if busy else 10)
                    if new is None:
                        break
                    returned = {l.id for l in new.leases}
                    for lid, state in sent.items():  # completed (reported) or dropped by the server (cancelled)
                        if lid not in returned and lid in self.jobs:
                            job = self.jobs.pop(lid)
                            if state != bots_pb2.LeaseState.COMPLETED:
                                log(f"lease {lid} cancelled by the server")
                                job.cancel()
                    session = new
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    log(f"bots call failed: {e.code().name}: {e.details()}")
                    if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                        session = None  # the server forgot us: start a new session
                    self.stop.wait(1)
                continue
            for lease in list(session.leases):
                if lease.state == bots_pb2.LeaseState.CANCELLED:
                    if lease.id in self.jobs:
                        self.jobs.pop(lease.id).cancel()
                    session.leases.remove(lease)
                elif lease.id not in self.jobs and lease.state in (bots_pb2.LeaseState.PENDING, bots_pb2.LeaseState.ACTIVE):
                    lease.state = bots_pb2.LeaseState.ACTIVE
                    job = self.jobs[lease.id] = Job(self, lease)
                    log(f"lease {lease.id} accepted")
                    job.start()
            if any(j.is_alive() for j in self.jobs.values()):
                self.stop.wait(0.2)  # the server answers at once while we are at capacity
        for job in self.jobs.values():
            job.cancel()
        self.channel.close()
        log("stopped")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--remote", required=True, help="HOST:PORT of the BuildGrid server (plaintext gRPC)")
    ap.add_argument("--instance", default="", help="the instance name (default \"\")")
    ap.add_argument("--bot-id", default=f"reapi-bot-{os.uname().nodename}-{os.getpid()}")
    ap.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                    help="a platform property this bot offers (default OSFamily=linux)")
    args = ap.parse_args()
    args.property = args.property or ["OSFamily=linux"]
    if any("=" not in p for p in args.property):
        ap.error("--property takes KEY=VALUE")
    bot = Bot(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: bot.stop.set())
    bot.run()


if __name__ == "__main__":
    main()
