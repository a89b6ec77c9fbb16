"""Checks k8s/ without a cluster:

  render    `kubectl kustomize k8s/` renders
  schema    every rendered object validates against the Kubernetes schemas
            (kubernetes-validate, strict: unknown fields are errors) of
            the oldest and newest versions checked (KUBE_VERSIONS)
  pods      every container of every workload runs under Docker as its pod
            would (image, command and args with $(VAR) expanded, env and
            envFrom resolved from the rendered ConfigMaps and Secrets,
            fieldRefs, ports, user, read-only root, dropped capabilities,
            emptyDir / configMap / PVC volumes, memory limit, sysctls), on
            a Docker network of its own where each Service name resolves to
            its pods, and answers its own readiness probe; a container with
            no probe (the loadgen Job) must still be running, or have exited
            0, after 10 s
  wiring    the pods reach each other by Service name with the Secret's
            values: the loadgen Job's connections are on the gateway, and
            its pod 0's POST /publish was accepted by the publisher
  typo      the same gateway pod with one misspelt GATEWAY_ variable must
            stop at start with exit 64: the pods check would catch a typo

Images: rtgate/* are the ones built from the Dockerfile (--image-tag picks
the tag); an official image that cannot be had here is replaced by its
local stand-in (--standin NAME=IMAGE, deploy/test/local-images.sh) and the
check says so.

Ends with a line `N passed, N failed, N skipped`; exits 1 if any failed.
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import kubernetes_validate
import yaml

KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


class Failed(Exception):
    pass


def sh(*cmd, timeout=120, check=True):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise Failed(f"{' '.join(cmd[:4])} … exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return done


def image_present(image):
    return sh("docker", "image", "inspect", image, check=False).returncode == 0


class Cluster:
    """The rendered objects, and what a kubelet would derive from them."""

    def __init__(self, docs):
        self.docs = docs
        self.by_kind = {}
        for d in docs:
            self.by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        self.namespace = next((d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"), "default")

    def config_data(self, kind, name):
        obj = self.by_kind.get(kind, {}).get(name)
        if obj is None:
            raise Failed(f"{kind} {name} is referenced but not rendered")
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        return data

    def env(self, container, pod_name, pod_ip):
        env = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                env.update(self.config_data("ConfigMap", src["configMapRef"]["name"]))
            elif "secretRef" in src:
                env.update(self.config_data("Secret", src["secretRef"]["name"]))
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "valueFrom" in var:
                ref = var["valueFrom"]
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    env[var["name"]] = self.config_data("ConfigMap", r["name"])[r["key"]]
                elif "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    env[var["name"]] = self.config_data("Secret", r["name"])[r["key"]]
                elif "fieldRef" in ref:
                    field = ref["fieldRef"]["fieldPath"]
                    env[var["name"]] = {
                        "metadata.name": pod_name,
                        "metadata.namespace": self.namespace,
                        "status.podIP": pod_ip,
                    }.get(field, "")
                else:
                    raise Failed(f"env {var['name']}: unsupported valueFrom {ref}")
            else:
                env[var["name"]] = ""
        return env

    def services_for(self, labels):
        """Names of the Services whose selector matches these pod labels."""
        names = []
        for name, svc in self.by_kind.get("Service", {}).items():
            sel = svc["spec"].get("selector") or {}
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                names.append(name)
        return names

    def workloads(self):
        """(kind, name, pod template, pod name) in start order: stateful
        sets, then deployments, then jobs."""
        out = []
        for kind in ("StatefulSet", "Deployment", "Job"):
            for name, obj in sorted(self.by_kind.get(kind, {}).items()):
                pod_name = f"{name}-0" if kind == "StatefulSet" else f"{name}-k8scheck"
                out.append((kind, name, obj["spec"]["template"], pod_name))
        return out


def expand(s, env):
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)


class PodRunner:
    def __init__(self, cluster, tag, standins, network, workdir):
        self.cluster, self.tag, self.standins = cluster, tag, standins
        self.network, self.workdir = network, workdir
        self.containers = []
        self.notes = []

    def image_for(self, image):
        if image.startswith("rtgate/"):
            name = image.split(":", 1)[0]
            return f"{name}:{self.tag}"
        if image_present(image) or sh("timeout", "60", "docker", "pull", "-q", image, check=False).returncode == 0:
            return image
        base = image.split("/")[-1].split(":")[0]
        if base in self.standins:
            self.notes.append(f"{image} cannot be had here: STAND-IN {self.standins[base]}")
            return self.standins[base]
        raise Failed(f"{image} cannot be had here and has no stand-in")

    def docker_args(self, kind, name, template, pod_name, container, extra_env=None):
        spec = template["spec"]
        labels = template["metadata"].get("labels", {})
        pod_sc = spec.get("securityContext", {})
        sc = {**pod_sc, **container.get("securityContext", {})}
        env = self.cluster.env(container, pod_name, "0.0.0.0")
        # The job controller gives each pod of an Indexed Job its index.
        if kind == "Job" and self.cluster.by_kind["Job"][name]["spec"].get("completionMode") == "Indexed":
            env.setdefault("JOB_COMPLETION_INDEX", "0")
        env.update(extra_env or {})
        cname = f"{self.network}-{pod_name}-{container['name']}"
        args = ["docker", "run", "-d", "--name", cname, "--network", self.network, "--hostname", pod_name]
        aliases = {pod_name, *self.cluster.services_for(labels)}
        if kind == "StatefulSet":
            aliases.add(f"{pod_name}.{template_service(self.cluster, name)}")
        for alias in sorted(aliases):
            args += ["--network-alias", alias]
        if "runAsUser" in sc:
            args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if "fsGroup" in pod_sc:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for s in pod_sc.get("sysctls", []):
            args += ["--sysctl", f"{s['name']}={s['value']}"]
        mem = container.get("resources", {}).get("limits", {}).get("memory")
        if mem:
            args += ["--memory", docker_size(mem)]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in self.cluster.by_kind.get("StatefulSet", {}).get(name, {}).get("spec", {}).get("volumeClaimTemplates", [])}
        for m in container.get("volumeMounts", []):
            vol = volumes.get(m["name"])
            if m["name"] in claims or (vol and "emptyDir" in vol):
                # A host directory, not a tmpfs: Docker copies the image's
                # mode and owner onto a tmpfs or volume mounted over an
                # existing directory, which the kubelet does not do. With
                # fsGroup, the kubelet makes the volume group-owned and
                # group-writable (setgid); an emptyDir is otherwise 0777.
                src = os.path.join(self.workdir, f"{pod_name}-{m['name']}")
                os.makedirs(src, exist_ok=True)
                if "fsGroup" in pod_sc:
                    os.chown(src, 0, int(pod_sc["fsGroup"]))
                    os.chmod(src, 0o2775)
                else:
                    os.chmod(src, 0o1777)
                args += ["-v", f"{src}:{m['mountPath']}"]
            elif vol and "configMap" in vol:
                src = os.path.join(self.workdir, f"{pod_name}-{m['name']}")
                os.makedirs(src, exist_ok=True)
                for key, value in self.cluster.config_data("ConfigMap", vol["configMap"]["name"]).items():
                    with open(os.path.join(src, key), "w", encoding="utf-8") as f:
                        f.write(value)
                os.chmod(src, 0o755)
                for f in os.listdir(src):
                    os.chmod(os.path.join(src, f), 0o644)
                args += ["-v", f"{src}:{m['mountPath']}:ro"]
            else:
                raise Failed(f"{name}/{container['name']}: volume {m['name']} of an unsupported kind")
        for k, v in sorted(env.items()):
            args += ["-e", f"{k}={v}"]
        command = [expand(c, env) for c in container.get("command", [])]
        cargs = [expand(a, env) for a in container.get("args", [])]
        if command:
            args += ["--entrypoint", command[0]]
        args.append(self.image_for(container["image"]))
        args += command[1:] + cargs
        return cname, args

    def start(self, kind, name, template, pod_name, container, extra_env=None):
        cname, args = self.docker_args(kind, name, template, pod_name, container, extra_env)
        sh("docker", "rm", "-f", cname, check=False)
        sh(*args)
        self.containers.append(cname)
        return cname

    def state(self, cname):
        out = sh("docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cname)
        status, code, *ip = out.stdout.split()
        return status, int(code), (ip[0] if ip else "")

    def probe_ok(self, cname, container, probe, ip):
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = ports.get(h["port"], h["port"]) if isinstance(h["port"], str) else h["port"]
            try:
                with urllib.request.urlopen(f"http://{ip}:{port}{h.get('path', '/')}", timeout=probe.get("timeoutSeconds", 1) + 1) as r:
                    return 200 <= r.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            p = probe["tcpSocket"]["port"]
            port = ports.get(p, p) if isinstance(p, str) else p
            try:
                socket.create_connection((ip, int(port)), timeout=2).close()
                return True
            except OSError:
                return False
        if "exec" in probe:
            return sh("docker", "exec", cname, *probe["exec"]["command"], check=False, timeout=10).returncode == 0
        raise Failed(f"unsupported probe {probe}")

    def wait_ready(self, cname, container, timeout=60):
        probe = container.get("readinessProbe")
        deadline = time.monotonic() + timeout
        if probe is None:
            time.sleep(10)
            status, code, _ = self.state(cname)
            if status == "running" or (status == "exited" and code == 0):
                last = logs(cname).splitlines()[-1:] or ["(no output yet)"]
                return f"no readiness probe; {status} after 10 s; last output: {last[0][:160]}"
            raise Failed(f"{cname} {status} with exit {code} (no probe):\n{logs(cname)}")
        time.sleep(probe.get("initialDelaySeconds", 0))
        while time.monotonic() < deadline:
            status, code, ip = self.state(cname)
            if status != "running":
                raise Failed(f"{cname} {status} with exit {code} before it was ready:\n{logs(cname)}")
            if ip and self.probe_ok(cname, container, probe, ip):
                kind = next(k for k in ("httpGet", "tcpSocket", "exec") if k in probe)
                what = probe[kind].get("path", "") if kind == "httpGet" else ""
                return f"ready ({kind} {what}".rstrip() + ")"
            time.sleep(1)
        raise Failed(f"{cname}: readiness probe not passing after {timeout} s:\n{logs(cname)}")

    def cleanup(self):
        for c in self.containers:
            sh("docker", "rm", "-f", c, check=False)


def metric(runner, cluster, deployment, name):
    """The value of metric `name` on the running container of `deployment`."""
    kind, dep, template, pod_name = next(w for w in cluster.workloads() if w[1] == deployment)
    container = template["spec"]["containers"][0]
    cname = f"{runner.network}-{pod_name}-{container['name']}"
    _, _, ip = runner.state(cname)
    port = container["ports"][0]["containerPort"]
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise Failed(f"{deployment} /metrics has no {name}")


def template_service(cluster, statefulset):
    return cluster.by_kind["StatefulSet"][statefulset]["spec"].get("serviceName", statefulset)


def logs(cname):
    out = sh("docker", "logs", "--tail", "20", cname, check=False)
    return (out.stdout + out.stderr).strip()


def docker_size(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", q)
    if not m:
        raise Failed(f"memory limit {q!r} not understood")
    n, unit = int(m.group(1)), m.group(2) or ""
    mult = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[unit]
    return str(n * mult)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--dir", default="k8s")
    p.add_argument("--image-tag", default="latest", help="tag of the locally built rtgate/* images")
    p.add_argument("--standin", action="append", default=[], help="NAME=IMAGE: stand-in for an official image named NAME")
    p.add_argument("--no-pods", action="store_true", help="render and schema only (no Docker engine)")
    a = p.parse_args()
    standins = dict(s.split("=", 1) for s in a.standin)
    results = []

    def report(name, ok, detail):
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)
        results.append(ok)

    rendered = sh(a.kubectl, "kustomize", a.dir, check=False)
    if rendered.returncode != 0:
        report("render", False, rendered.stderr.strip())
        print("k8s-check: 0 passed, 1 failed, 0 skipped")
        sys.exit(1)
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    report("render", True, f"kubectl kustomize {a.dir}: {len(docs)} objects ({', '.join(sorted({d['kind'] for d in docs}))})")

    for version in KUBE_VERSIONS:
        errors = []
        for d in docs:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {'/'.join(map(str, e.path))}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                errors.append(f"{d['kind']}/{d['metadata']['name']}: {e}")
        report(f"schema {version}", not errors, "; ".join(errors) if errors else f"{len(docs)} objects valid (strict)")

    if a.no_pods:
        passed = sum(results)
        print("SKIP  pods, typo  (--no-pods: no Docker engine)")
        print(f"k8s-check: {passed} passed, {len(results) - passed} failed, 2 skipped")
        sys.exit(0 if passed == len(results) else 1)
    cluster = Cluster(docs)
    network = f"rtgate-k8s-{os.getpid()}"
    workdir = tempfile.mkdtemp(prefix="rtgate-k8s-check.")
    runner = PodRunner(cluster, a.image_tag, standins, network, workdir)
    sh("docker", "network", "create", "--label", "rtgate-k8s-check=1", network)
    try:
        gateway_template = None
        for kind, name, template, pod_name in cluster.workloads():
            for container in template["spec"]["containers"]:
                label = f"pod {kind.lower()}/{name}/{container['name']}"
                try:
                    cname = runner.start(kind, name, template, pod_name, container)
                    detail = runner.wait_ready(cname, container)
                    report(label, True, f"{container['image']}: {detail}")
                except (Failed, subprocess.SubprocessError) as e:
                    report(label, False, str(e))
            if name == "gateway":
                gateway_template = (kind, name, template, pod_name)
        # The pods agree with each other, not only with their images: the
        # loadgen Job reached the gateway through its Service name, and its
        # pod 0 published through the publisher's Service with the Secret's
        # key (the publisher counts what POST /publish accepted).
        # loadgen publishes once all its subscriptions are acknowledged
        # (15,000 connections at 500/s: half a minute and more).
        try:
            deadline = time.monotonic() + 120
            published = conns = 0.0
            while time.monotonic() < deadline:
                published = metric(runner, cluster, "publisher", "publisher_http_published_total")
                conns = metric(runner, cluster, "gateway", "gateway_connections")
                if published > 0:
                    break
                time.sleep(2)
            ok = published > 0 and conns > 0
            report("wiring", ok, f"loadgen pod 0 -> publisher: {published:.0f} published with the Secret's key; gateway holds {conns:.0f} loadgen connections")
        except (Failed, OSError, ValueError) as e:
            report("wiring", False, str(e))
        for note in sorted(set(runner.notes)):
            print(f"NOTE  {note}")
        if gateway_template is None:
            report("typo", False, "no gateway Deployment rendered")
        else:
            kind, name, template, _ = gateway_template
            container = template["spec"]["containers"][0]
            cname = runner.start(kind, name, template, "gateway-typo", container, {"GATEWAY_REDIS_ULR": "redis://redis:6379"})
            deadline = time.monotonic() + 20
            status, code = "running", 0
            while time.monotonic() < deadline:
                status, code, _ = runner.state(cname)
                if status != "running":
                    break
                time.sleep(0.5)
            out = logs(cname)
            ok = status == "exited" and code == 64 and "redis_ulr" in out.lower()
            last = out.splitlines()[-1][:160] if out else ""
            report("typo", ok, f"GATEWAY_REDIS_ULR set: {status}, exit {code}: {last}")
    finally:
        runner.cleanup()
        sh("docker", "network", "rm", network, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    passed = sum(results)
    failed = len(results) - passed
    print(f"k8s-check: {passed} passed, {failed} failed, 0 skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
