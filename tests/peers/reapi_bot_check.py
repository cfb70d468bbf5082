#!/usr/bin/env python3
"""Checks reapi_bot.py through a BuildGrid server, without vx: a plain REAPI
client (Execute + CAS + Operations) sends actions and checks what comes back.

  1. `sh -c 'mkdir -p out/tree/sub && cat input.txt > out/x && …'` with an input
     file, an executable input and a 1.5 MB one (ByteStream in and out of the
     bot): output_paths give a file with the input's
     bytes, a directory as a Tree (nested dir, executable file), a symlink;
     stdout is "done"; execution_metadata.worker is the bot's id.
  2. a failing command: its exit code and stderr come back.
  3. legacy output_files/output_directories.
  4. Action.timeout: the command is killed, status DEADLINE_EXCEEDED.
  5. CancelOperation: the bot kills the running command (its pid is gone).

Exits 0 and prints "reapi_bot_check: ok" when all hold; else a message and 1.
Usage: reapi_bot_check.py --remote 127.0.0.1:PORT
"""
import argparse, hashlib, os, sys, tempfile, time
import grpc
from google.protobuf.duration_pb2 import Duration
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.longrunning import operations_pb2, operations_pb2_grpc
from buildgrid._protos.google.rpc import code_pb2


BIG = bytes(range(256)) * 6000  # 1.5 MB: over the bot's batch limit, so ByteStream both ways


def blob(store, data):
    d = re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    store[d.hash] = (d, data)
    return d


def msg(store, m):
    return blob(store, m.SerializeToString(deterministic=True))


class Client:
    def __init__(self, remote):
        ch = grpc.insecure_channel(remote)
        self.cas = re_grpc.ContentAddressableStorageStub(ch)
        self.exe = re_grpc.ExecutionStub(ch)
        self.ops = operations_pb2_grpc.OperationsStub(ch)

    def get(self, d):
        r = self.cas.BatchReadBlobs(re.BatchReadBlobsRequest(digests=[d])).responses[0]
        assert r.status.code == 0, f"blob {d.hash} missing: {r.status.message}"
        return r.data

    def action(self, argv, outputs=(), legacy=None, timeout=None):
        """Uploads an action (input root: input.txt, tool.sh 0755, sub/y) and returns its digest."""
        s = {}
        sub = re.Directory(files=[re.FileNode(name="y", digest=blob(s, b"nested\n"))])
        root = re.Directory(
            files=[re.FileNode(name="big.bin", digest=blob(s, BIG)),
                   re.FileNode(name="input.txt", digest=blob(s, b"input-content\n")),
                   re.FileNode(name="tool.sh", digest=blob(s, b"#!/bin/sh\necho tool\n"), is_executable=True)],
            directories=[re.DirectoryNode(name="sub", digest=msg(s, sub))])
        cmd = re.Command(arguments=argv, output_paths=sorted(outputs), output_node_properties=["unix_mode"],
                         environment_variables=[re.Command.EnvironmentVariable(name="GREETING", value="hi")])
        if legacy:
            del cmd.output_paths[:]
            cmd.output_files.extend(legacy[0])
            cmd.output_directories.extend(legacy[1])
        act = re.Action(command_digest=msg(s, cmd), input_root_digest=msg(s, root), do_not_cache=True)
        if timeout:
            act.timeout.CopyFrom(Duration(seconds=timeout))
        ad = msg(s, act)
        self.cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(
            requests=[re.BatchUpdateBlobsRequest.Request(digest=d, data=b) for d, b in s.values()]))
        return ad

    def execute(self, ad, on_first=None):
        last = None
        for op in self.exe.Execute(re.ExecuteRequest(action_digest=ad, skip_cache_lookup=True), timeout=120):
            if on_first:
                on_first(op)
                on_first = None
            last = op
        assert last is not None and last.done, f"operation not done: {last}"
        resp = re.ExecuteResponse()
        last.response.Unpack(resp)
        return resp


def check(remote, bot_id):
    c = Client(remote)
    # 1. outputs by output_paths
    script = ("mkdir -p out/tree/sub && cat input.txt > out/x && echo $GREETING >> out/x && cp tool.sh out/tree/"
              " && cp sub/y out/tree/sub/ && ln -s ../x out/tree/link && ln -s x out/l && cp big.bin out/big.bin"
              " && echo done")
    r = c.execute(c.action(["sh", "-c", script], ["out/x", "out/tree", "out/l", "out/big.bin"]))
    assert r.status.code == 0, r.status
    res = r.result
    assert res.exit_code == 0, res
    assert c.get(res.stdout_digest) == b"done\n", c.get(res.stdout_digest)
    assert res.execution_metadata.worker == bot_id, res.execution_metadata.worker
    big, f = sorted(res.output_files, key=lambda o: o.path)
    assert big.path == "out/big.bin" and c.get(big.digest) == BIG, big.path
    assert f.path == "out/x" and c.get(f.digest) == b"input-content\nhi\n" and not f.is_executable, f
    assert f.node_properties.unix_mode.value == 0o644, f
    (d,) = res.output_directories
    tree = re.Tree.FromString(c.get(d.tree_digest))
    assert d.path == "out/tree", d
    (tool,) = tree.root.files
    assert tool.name == "tool.sh" and tool.is_executable and c.get(tool.digest) == b"#!/bin/sh\necho tool\n", tool
    assert [(l.name, l.target) for l in tree.root.symlinks] == [("link", "../x")], tree.root.symlinks
    (sub,) = tree.children
    assert sub.files[0].name == "y" and c.get(sub.files[0].digest) == b"nested\n", sub
    assert [(l.path, l.target) for l in res.output_symlinks] == [("out/l", "x")], res.output_symlinks
    # 2. a failing command
    r = c.execute(c.action(["sh", "-c", "echo oops >&2; exit 3"]))
    assert r.result.exit_code == 3 and c.get(r.result.stderr_digest) == b"oops\n", r.result
    # 3. legacy fields
    r = c.execute(c.action(["sh", "-c", "mkdir -p o/d && echo a > o/f && echo b > o/d/g"],
                           legacy=(["o/f"], ["o/d"])))
    assert [o.path for o in r.result.output_files] == ["o/f"], r.result
    assert [o.path for o in r.result.output_directories] == ["o/d"], r.result
    # 4. Action.timeout
    r = c.execute(c.action(["sh", "-c", "sleep 30"], timeout=1))
    assert r.status.code == code_pb2.DEADLINE_EXCEEDED, r.status
    # 5. cancellation kills the command
    with tempfile.TemporaryDirectory() as tmp:
        pidfile = os.path.join(tmp, "pid")
        ad = c.action(["sh", "-c", f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile} && exec sleep 60"])
        stream = c.exe.Execute(re.ExecuteRequest(action_digest=ad, skip_cache_lookup=True), timeout=60)
        name = next(stream).name
        t0 = time.time()
        while not os.path.exists(pidfile):
            assert time.time() - t0 < 30, "the long command never started"
            time.sleep(0.1)
        pid = int(open(pidfile).read())
        c.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=name))
        stream.cancel()
        while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
            assert time.time() - t0 < 45, f"pid {pid} still runs after CancelOperation"
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remote", required=True)
    ap.add_argument("--bot-id", required=True, help="the id of the (only) bot serving the server")
    a = ap.parse_args()
    try:
        check(a.remote, a.bot_id)
    except AssertionError as e:
        print(f"reapi_bot_check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print("reapi_bot_check: ok")


if __name__ == "__main__":
    main()
