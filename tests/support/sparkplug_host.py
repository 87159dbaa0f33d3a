"""A Sparkplug B 3.0 host application for sluice's integration tests.

It checks sluice's edge node against Sparkplug implementations the project did
not write: every message under spBv1.0/<group>/ is decoded both by pysparkplug
and by Eclipse Tahu's sparkplug-payload (npm, in one long-lived node child,
sparkplug_decode.js), which must agree; commands are encoded by pysparkplug.

    sparkplug_host.py --port P --group G [--host-id H] [--session ID]

MQTT 3.1.1, clean session (--session: client ID with a persistent one),
127.0.0.1:P; subscribes spBv1.0/G/# at QoS 1, then
prints {"ready": true}. With --host-id the Will is the retained QoS 1 STATE
death on spBv1.0/STATE/H, stamped at CONNECT; `online` reuses that stamp.

stdout, one JSON object a line, per message: {"topic", "message_type",
"group_id", "edge_node_id", "device_id", "qos", "retain" (as delivered: with
3.1.1 only for retained messages sent on subscribing), "timestamp", "seq",
"metrics": [{"name" (null when only an alias was sent), "resolved_name" (through
the BIRTH), "alias", "datatype" (e.g. "UInt64"; from the BIRTH when not sent),
"datatype_on_wire", "value", "timestamp", "is_historical", "is_transient",
"is_null"}], "tahu": <sparkplug_decode.js's decoding>}; or {"topic", "error":
"<decoder>: ..."} when a decoder fails (instead) or the two disagree (just
before the message). This host's own publishes are not echoed.

stdin, one command a line, each answered with {"done": "<word>"} once published
(QoS 1: PUBACK) or {"done", "error"}: online | offline | rebirth <edge> |
ncmd <edge> <metric name> <DataType> <json> | dcmd <edge> <device> <metric name>
<DataType> <json> | raw <topic> <hex> | quit. CMD metrics have a name and no
datatype (the spec: SHOULD NOT), QoS 0. JSON values: DateTime as ms, Bytes/File
as hex, arrays as lists.
"""

import argparse
import base64
import datetime
import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pysparkplug as spb
from pysparkplug import _protobuf  # pysparkplug's bindings: which fields are on the wire

TYPES = ("Unknown Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float Double Boolean String DateTime Text "
         "UUID DataSet Bytes File Template PropertySet PropertySetList Int8Array Int16Array Int32Array "
         "Int64Array UInt8Array UInt16Array UInt32Array UInt64Array FloatArray DoubleArray BooleanArray "
         "StringArray DateTimeArray").split()
TAHU_TYPES = 22  # sparkplug-payload 1.0.3 decodes no array types
BIRTHS = (spb.MessageType.NBIRTH, spb.MessageType.DBIRTH)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MS = datetime.timedelta(milliseconds=1)
SAFE = 2**53 - 1
out = threading.Lock()


def emit(obj):
    with out:
        sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")
        sys.stdout.flush()


def plain(v):
    """A pysparkplug value as JSON: DateTime as ms, bytes as hex, arrays as lists, NaN/inf as strings."""
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(v)]
    return (v - EPOCH) // MS if isinstance(v, datetime.datetime) else v.hex() if isinstance(v, bytes) else v


def like_tahu(v):
    """As sparkplug_decode.js writes it: integers beyond 2^53 - 1 as strings."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) and abs(v) > SAFE else v


def to_value(dtype, v):
    """A JSON command value as pysparkplug encodes it."""
    name = TYPES[dtype]
    one = ((lambda x: EPOCH + x * MS) if name.startswith("DateTime")
           else bytes.fromhex if name in ("Bytes", "File") else (lambda x: x))
    return None if v is None else tuple(map(one, v)) if name.endswith("Array") else one(v)


class Tahu:
    """The node child: one base64 payload (plus datatype hints) a line in, one JSON line out."""

    def __init__(self):
        script = Path(__file__).with_name("sparkplug_decode.js")
        self.proc = subprocess.Popen(["node", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def decode(self, raw, hints=None):  # only ever called from paho's network thread (and before it runs)
        self.proc.stdin.write(base64.b64encode(raw).decode() + (" " + json.dumps(hints) if hints else "") + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"node exited ({self.proc.poll()})")
        answer = json.loads(answer)
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer["ok"]


def hints_of(tahu):
    """Datatypes by alias and by name, from Tahu's decoding of a BIRTH."""
    known = [m for m in tahu.get("metrics", []) if m.get("type") in TYPES]
    return {key: {str(m[key]): TYPES.index(m["type"]) for m in known if key in m} for key in ("alias", "name")}


class Host:
    def __init__(self, args):
        self.args, self.prefix = args, f"spBv1.0/{args.group}/"
        self.tahu = Tahu()
        self.tahu.decode(b"")  # fails here, before "ready", when node or the module is missing
        self.births, self.hints, self.sent, self.online = {}, {}, [], False
        self.last_state_ts = 0
        # --session: a persistent session, so the broker queues what comes
        # while this host is away (with queue_qos0_messages, QoS 0 too).
        client_id = args.session or f"sluice-test-host-{os.getpid()}"
        self.client = mqtt.Client(client_id, clean_session=not args.session, protocol=mqtt.MQTTv311)
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.client.on_connect, self.client.on_subscribe = self.on_connect, self.on_subscribe
        self.client.on_disconnect, self.client.on_message = self.on_disconnect, self.on_message
        if args.host_id:
            self.state_topic = f"spBv1.0/STATE/{args.host_id}"
            self.set_will()

    def set_will(self):
        """The STATE death, stamped with the time of the next CONNECT (the birth reuses it)."""
        self.will_ts = spb.get_current_timestamp()
        death = spb.State(timestamp=self.will_ts, online=False).encode()
        self.client.will_set(self.state_topic, death, qos=1, retain=True)

    def on_connect(self, client, _userdata, _flags, rc):
        if rc != 0:
            return print(f"sparkplug_host: CONNACK {rc}", file=sys.stderr, flush=True)
        self.forget(lambda _: True)
        topics = [(self.prefix + "#", 1)] + ([(self.state_topic, 1)] if self.args.host_id else [])
        client.subscribe(topics)
        if self.online:  # after a reconnect the broker has published our Will: born again
            client.publish(*self.state(True))
        self.connected.set()

    def on_subscribe(self, _client, _userdata, _mid, granted):
        if all(q in (0, 1, 2) for q in granted):
            self.subscribed.set()

    def on_disconnect(self, _client, _userdata, rc):
        print(f"sparkplug_host: disconnected ({rc})", file=sys.stderr, flush=True)
        if self.args.host_id:
            self.set_will()

    def on_message(self, _client, _userdata, msg):
        if not msg.topic.startswith(self.prefix):
            return
        key = (msg.topic, bytes(msg.payload))
        if key in self.sent:
            return self.sent.remove(key)
        try:
            for line in self.message(msg):
                emit(line)
        except Exception as e:  # never let a payload stop the network thread
            emit({"topic": msg.topic, "error": f"host: {type(e).__name__}: {e}"})

    def message(self, msg):
        topic, raw, note = msg.topic, bytes(msg.payload), ""
        try:
            t = spb.Topic.from_str(topic)
            kind, node, dev = t.message_type, (t.edge_node_id, None), (t.edge_node_id, t.device_id)
            note = "" if kind in BIRTHS or dev in self.births else " (no BIRTH in force for it)"
            payload = kind.payload.decode(raw, birth=self.births.get(dev))
            pb = _protobuf.Payload.FromString(raw)
            deaths = (spb.MessageType.NDEATH, spb.MessageType.DDEATH)
            metrics = [spb.Metric.from_pb(m) for m in pb.metrics] if kind in deaths else list(payload.metrics)
        except Exception as e:
            return [{"topic": topic, "error": f"pysparkplug: {type(e).__name__}: {e}{note}"}]
        try:
            tahu = self.tahu.decode(raw, None if kind in BIRTHS else self.hints.get(dev))
        except Exception as e:
            return [{"topic": topic, "error": f"tahu: {e}"}]
        if kind in BIRTHS:
            if kind == spb.MessageType.NBIRTH:  # a new session: every DBIRTH must come again
                self.forget(lambda k: k[0] == t.edge_node_id)
            self.births[dev], self.hints[dev] = payload, hints_of(tahu)
        elif kind == spb.MessageType.DDEATH:
            self.forget(lambda k: k == dev)
        elif kind == spb.MessageType.NDEATH and self.bd_seq(node) in (None, payload.bd_seq_metric.value):
            self.forget(lambda k: k[0] == t.edge_node_id)
        ts, seq = (pb.timestamp if pb.HasField("timestamp") else None), (pb.seq if pb.HasField("seq") else None)
        line = {"topic": topic, "message_type": kind.value, "group_id": t.group_id, "edge_node_id": t.edge_node_id,
                "device_id": t.device_id, "qos": msg.qos, "retain": bool(msg.retain), "timestamp": ts,
                "seq": seq, "metrics": [], "tahu": tahu}
        problems = [f"payload {what}: pysparkplug {a!r}, tahu {b!r}"
                    for what, a, b in (("timestamp", ts, tahu.get("timestamp")), ("seq", seq, tahu.get("seq")))
                    if like_tahu(a) != b]
        tahu_metrics = tahu.get("metrics", [])
        if len(tahu_metrics) != len(metrics):
            problems.append(f"{len(metrics)} metrics, tahu {len(tahu_metrics)}")
        for i, (m, wire) in enumerate(zip(metrics, pb.metrics)):
            name = wire.name if wire.HasField("name") else None
            line["metrics"].append({
                "name": name, "resolved_name": m.name, "alias": m.alias, "datatype": TYPES[m.datatype],
                "datatype_on_wire": wire.datatype != 0, "value": plain(m.value), "timestamp": m.timestamp,
                "is_historical": m.is_historical, "is_transient": m.is_transient, "is_null": m.is_null})
            if i >= len(tahu_metrics):
                continue
            tm = tahu_metrics[i]
            checks = [("name", name, tm.get("name")), ("alias", m.alias, tm.get("alias")),
                      ("timestamp", like_tahu(m.timestamp), tm.get("timestamp")),
                      ("is_historical", m.is_historical, tm.get("isHistorical", False))]
            if m.datatype < TAHU_TYPES:
                checks += [("datatype", TYPES[m.datatype], tm.get("type")),
                           ("value", like_tahu(plain(m.value)), tm.get("value"))]
            problems += [f"metric {i} {what}: pysparkplug {a!r}, tahu {b!r}" for what, a, b in checks if a != b]
        errors = [{"topic": topic, "error": "decoders disagree: " + "; ".join(problems)}] if problems else []
        return errors + [line]

    def forget(self, which):
        """Drops the BIRTHs (of (edge, device) keys) `which` selects."""
        for key in [k for k in self.births if which(k)]:
            self.births.pop(key)
            self.hints.pop(key, None)

    def bd_seq(self, node):
        return next((m.value for m in getattr(self.births.get(node), "metrics", ()) if m.name == "bdSeq"), None)

    def state(self, online):
        ts = self.will_ts if online else spb.get_current_timestamp()
        # Online again after `offline` on one connection: a real host would
        # have reconnected, with a newer stamp; edge nodes ignore older ones.
        ts = max(ts, self.last_state_ts + 1)
        self.last_state_ts = ts
        return self.state_topic, spb.State(timestamp=ts, online=online).encode(), 1, True

    def command(self, line):
        """The (topic, payload, qos, retain) a command line publishes."""
        word, *rest = line.split()
        if word in ("online", "offline"):
            if not self.args.host_id:
                raise ValueError("online/offline need --host-id")
            self.online = word == "online"
            return self.state(self.online)
        if word == "rebirth" and len(rest) == 1:
            return self.cmd("NCMD", rest, "Node Control/Rebirth", spb.DataType.BOOLEAN, True)
        if word in ("ncmd", "dcmd"):  # the name may hold spaces: the DataType is the first word a JSON value follows
            n = 2 if word == "ncmd" else 3  # words before the metric name
            spans, codes = [m.span() for m in re.finditer(r"\S+", line)], {t.lower(): i for i, t in enumerate(TYPES)}
            for i in range(n + 1, len(spans) - 1):
                dtype = codes.get(line[spans[i][0]:spans[i][1]].lower())
                try:
                    value = json.loads(line[spans[i + 1][0]:])
                except ValueError:
                    continue
                if dtype is not None:
                    name = line[spans[n][0]:spans[i - 1][1]]
                    return self.cmd(word.upper(), rest[:n - 1], name, spb.DataType(dtype), value)
            ids = "<edge> <device>" if n == 3 else "<edge>"
            raise ValueError(f"usage: {word} {ids} <metric name> <DataType> <json value>")
        if word == "raw" and len(rest) in (1, 2):
            return rest[0], bytes.fromhex(rest[1] if len(rest) == 2 else ""), 0, False
        raise ValueError(f"unknown command or wrong arguments: {line!r}")

    def cmd(self, verb, ids, name, dtype, value):
        """An NCMD (ids: [edge]) or DCMD (ids: [edge, device]) of one metric, by name, encoded by pysparkplug."""
        ts = spb.get_current_timestamp()
        metric = spb.Metric(timestamp=ts, name=name, datatype=dtype, value=to_value(dtype, value))
        payload = (spb.NCmd if verb == "NCMD" else spb.DCmd)(timestamp=ts, metrics=(metric,)).encode()
        topic = spb.Topic(self.args.group, spb.MessageType(verb), *ids)
        return str(topic), payload, 0, False

    def run(self):
        self.client.connect("127.0.0.1", self.args.port, keepalive=30)
        self.client.loop_start()
        if not (self.connected.wait(10) and self.subscribed.wait(10)):
            sys.exit(f"sparkplug_host: no connection or subscription on 127.0.0.1:{self.args.port}")
        emit({"ready": True})
        for line in map(str.strip, sys.stdin):
            if not line:
                continue
            word = line.split()[0]
            if word == "quit":
                break
            try:
                topic, payload, qos, retain = self.command(line)
                if topic.startswith(self.prefix):
                    self.sent.append((topic, payload))
                info = self.client.publish(topic, payload, qos=qos, retain=retain)
                info.wait_for_publish(timeout=10)
                if not info.is_published():
                    raise RuntimeError("not published within 10 s")
                emit({"done": word})
            except Exception as e:
                emit({"done": word, "error": f"{type(e).__name__}: {e}"})
        self.client.disconnect()
        self.client.loop_stop()
        emit({"done": "quit"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--host-id")
    parser.add_argument("--session")
    Host(parser.parse_args()).run()
