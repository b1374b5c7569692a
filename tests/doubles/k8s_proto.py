"""Kubernetes objects in kube-apiserver's protobuf storage encoding, as etcd holds them: the 4-byte magic
"k8s\\0", then a runtime.Unknown whose raw field holds the object. Built with Google's protobuf runtime from the
field numbers of Kubernetes' generated.proto files (k8s.io/apimachinery/pkg/runtime, .../apis/meta/v1,
k8s.io/api/core/v1, k8s.io/api/apps/v1), so the bytes come from an implementation independent of cpr's decoder.
Only the fields the tests and the kubeadm double touch are declared; the runtime keeps every other field of a
decoded object as an unknown field and writes it back unchanged.

Used by tests/fixtures/k8s-configmap.py (objects for a source cluster's etcd) and by the kubeadm double (what
kubeadm's phases after wait-control-plane store through the API server). Needs the protobuf package (PyPI
`protobuf`, Debian `python3-protobuf`).
"""
import time
import uuid

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

MAGIC = b"k8s\x00"
F = descriptor_pb2.FieldDescriptorProto


def _message(file, name, fields):
    msg = file.message_type.add(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = msg.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    return msg


def _map_entry(msg, name, value_type=F.TYPE_STRING):
    entry = msg.nested_type.add(name=name)
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=value_type, label=F.LABEL_OPTIONAL)


def _build_classes():
    file = descriptor_pb2.FileDescriptorProto(name="k8s-subset.proto", package="k8s", syntax="proto2")
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    _message(file, "TypeMeta", [("apiVersion", 1, F.TYPE_STRING, opt, None), ("kind", 2, F.TYPE_STRING, opt, None)])
    _message(file, "Unknown", [
        ("typeMeta", 1, F.TYPE_MESSAGE, opt, ".k8s.TypeMeta"),
        ("raw", 2, F.TYPE_BYTES, opt, None),
        ("contentEncoding", 3, F.TYPE_STRING, opt, None),
        ("contentType", 4, F.TYPE_STRING, opt, None),
    ])
    _message(file, "Time", [("seconds", 1, F.TYPE_INT64, opt, None), ("nanos", 2, F.TYPE_INT32, opt, None)])
    meta = _message(file, "ObjectMeta", [
        ("name", 1, F.TYPE_STRING, opt, None),
        ("namespace", 3, F.TYPE_STRING, opt, None),
        ("uid", 5, F.TYPE_STRING, opt, None),
        ("resourceVersion", 6, F.TYPE_STRING, opt, None),
        ("creationTimestamp", 8, F.TYPE_MESSAGE, opt, ".k8s.Time"),
        ("deletionTimestamp", 9, F.TYPE_MESSAGE, opt, ".k8s.Time"),
        ("deletionGracePeriodSeconds", 10, F.TYPE_INT64, opt, None),
        ("labels", 11, F.TYPE_MESSAGE, rep, ".k8s.ObjectMeta.LabelsEntry"),
    ])
    _map_entry(meta, "LabelsEntry")
    config_map = _message(file, "ConfigMap", [
        ("metadata", 1, F.TYPE_MESSAGE, opt, ".k8s.ObjectMeta"),
        ("data", 2, F.TYPE_MESSAGE, rep, ".k8s.ConfigMap.DataEntry"),
    ])
    _map_entry(config_map, "DataEntry")
    # core/v1 Secret (metadata 1, data 2 as map<string, bytes>, type 3).
    secret = _message(file, "Secret", [
        ("metadata", 1, F.TYPE_MESSAGE, opt, ".k8s.ObjectMeta"),
        ("data", 2, F.TYPE_MESSAGE, rep, ".k8s.Secret.DataEntry"),
        ("type", 3, F.TYPE_STRING, opt, None),
    ])
    _map_entry(secret, "DataEntry", F.TYPE_BYTES)
    # core/v1: Node (metadata 1, spec 2), NodeSpec (podCIDR 1, taints 5), Taint (key 1, value 2,
    # effect 3, timeAdded 4).
    _message(file, "Taint", [
        ("key", 1, F.TYPE_STRING, opt, None),
        ("value", 2, F.TYPE_STRING, opt, None),
        ("effect", 3, F.TYPE_STRING, opt, None),
        ("timeAdded", 4, F.TYPE_MESSAGE, opt, ".k8s.Time"),
    ])
    _message(file, "NodeSpec", [
        ("podCIDR", 1, F.TYPE_STRING, opt, None),
        ("taints", 5, F.TYPE_MESSAGE, rep, ".k8s.Taint"),
    ])
    _message(file, "Node", [
        ("metadata", 1, F.TYPE_MESSAGE, opt, ".k8s.ObjectMeta"),
        ("spec", 2, F.TYPE_MESSAGE, opt, ".k8s.NodeSpec"),
    ])
    # meta/v1 LabelSelector (matchLabels 1); apps/v1 DaemonSet and Deployment (metadata 1, spec 2),
    # DaemonSetSpec (selector 1), DeploymentSpec (replicas 1, selector 2).
    selector = _message(file, "LabelSelector",
                        [("matchLabels", 1, F.TYPE_MESSAGE, rep, ".k8s.LabelSelector.MatchLabelsEntry")])
    _map_entry(selector, "MatchLabelsEntry")
    _message(file, "DaemonSetSpec", [("selector", 1, F.TYPE_MESSAGE, opt, ".k8s.LabelSelector")])
    _message(file, "DeploymentSpec", [("replicas", 1, F.TYPE_INT32, opt, None),
                                      ("selector", 2, F.TYPE_MESSAGE, opt, ".k8s.LabelSelector")])
    _message(file, "DaemonSet", [("metadata", 1, F.TYPE_MESSAGE, opt, ".k8s.ObjectMeta"),
                                 ("spec", 2, F.TYPE_MESSAGE, opt, ".k8s.DaemonSetSpec")])
    _message(file, "Deployment", [("metadata", 1, F.TYPE_MESSAGE, opt, ".k8s.ObjectMeta"),
                                  ("spec", 2, F.TYPE_MESSAGE, opt, ".k8s.DeploymentSpec")])
    # core/v1 Pod (metadata 1, spec 2; status is not modelled), PodSpec (terminationGracePeriodSeconds 4,
    # nodeName 10).
    _message(file, "PodSpec", [("terminationGracePeriodSeconds", 4, F.TYPE_INT64, opt, None),
                               ("nodeName", 10, F.TYPE_STRING, opt, None)])
    _message(file, "Pod", [("metadata", 1, F.TYPE_MESSAGE, opt, ".k8s.ObjectMeta"),
                           ("spec", 2, F.TYPE_MESSAGE, opt, ".k8s.PodSpec")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)

    # GetMessageClass arrived in protobuf 4.22; Debian bookworm's python3-protobuf (3.21, in the
    # replacement-machine image) has only the factory.
    message_class = getattr(message_factory, "GetMessageClass", None) or message_factory.MessageFactory(pool).GetPrototype

    def get(name):
        return message_class(pool.FindMessageTypeByName("k8s." + name))
    return {name: get(name) for name in ("Unknown", "ConfigMap", "Secret", "Node", "DaemonSet", "Deployment", "Pod")}


CLASSES = _build_classes()
API_VERSION = {"ConfigMap": "v1", "Secret": "v1", "Node": "v1", "Pod": "v1", "DaemonSet": "apps/v1", "Deployment": "apps/v1"}


def new(kind, namespace, name, labels=None):
    """An object of `kind` with kube-apiserver's metadata (uid, creationTimestamp) set."""
    obj = CLASSES[kind]()
    obj.metadata.name = name
    if namespace:
        obj.metadata.namespace = namespace
    obj.metadata.uid = str(uuid.uuid4())
    obj.metadata.resourceVersion = ""
    obj.metadata.creationTimestamp.seconds = int(time.time())
    for key, value in (labels or {}).items():
        obj.metadata.labels[key] = value
    return obj


def config_map(namespace, name, data, labels=None):
    obj = new("ConfigMap", namespace, name, labels)
    for key, value in data.items():
        obj.data[key] = value
    return obj


def workload(kind, namespace, name):
    """An apps/v1 DaemonSet or Deployment labelled and selected by k8s-app=NAME, as kubeadm's addons are."""
    obj = new(kind, namespace, name, {"k8s-app": name})
    obj.spec.selector.matchLabels["k8s-app"] = name
    return obj


def encode(obj):
    """The bytes kube-apiserver stores in etcd for `obj`."""
    kind = obj.DESCRIPTOR.name
    unknown = CLASSES["Unknown"](raw=obj.SerializeToString(), contentEncoding="", contentType="")
    unknown.typeMeta.apiVersion = API_VERSION[kind]
    unknown.typeMeta.kind = kind
    return MAGIC + unknown.SerializeToString()


def decode(value, kind):
    """The object of `kind` stored as `value`; ValueError for anything else (JSON, encrypted, another kind)."""
    if not value.startswith(MAGIC):
        raise ValueError(f"not a protobuf-encoded object (starts {value[:12]!r})")
    unknown = CLASSES["Unknown"]()
    unknown.ParseFromString(value[len(MAGIC):])
    if unknown.typeMeta.kind != kind:
        raise ValueError(f"holds a {unknown.typeMeta.kind!r}, not a {kind}")
    obj = CLASSES[kind]()
    obj.ParseFromString(unknown.raw)
    return obj
