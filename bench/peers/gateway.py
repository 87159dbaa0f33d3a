#!/usr/bin/env python3
"""Serial → MQTT gateway for the gateway's JSON telemetry lines, written the
way a typical user writes one with pyserial and paho-mqtt: read a line,
json.loads it, publish one message per value.

It publishes what the json-telemetry transform publishes (see
transforms/json-telemetry/src/lib.rs): <prefix>/<node>/temperature|humidity|
battery, <prefix>/signal/rssi|snr (retained) and <prefix>/stats/seq|rx|crc_err
(not retained), QoS 1, in the order the values appear in the line.

Like most such scripts it does not wait for each publish to be acknowledged
(no wait_for_publish): paho's network thread (loop_start) sends and retries,
and messages queue in paho's memory without bound while the broker is slow.

With --influx-url it also writes the transform's four InfluxDB points per
line (environment per node, signal, gateway_stats; same fields and types),
stamped with the time the line was read, in one POST /write per line from
the read loop (urllib), as such a script typically does.

Used by sluice-bench (bench/src); run by hand:
  gateway.py --serial /dev/ttyUSB0 --mqtt-port 1883
"""
import argparse
import json
import time
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
import serial

NODE_METRICS = (("t", "temperature"), ("h", "humidity"), ("bat", "battery"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serial", required=True)
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--prefix", default="iiot")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--influx-url", help="InfluxDB 1.x base URL, e.g. http://127.0.0.1:8086")
    parser.add_argument("--influx-db", default="sluice")
    args = parser.parse_args()
    write_url = None
    if args.influx_url:
        query = urllib.parse.urlencode({"db": args.influx_db, "precision": "ns"})
        write_url = f"{args.influx_url}/write?{query}"

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="python-gateway")
    client.connect(args.mqtt_host, args.mqtt_port, keepalive=60)
    client.loop_start()

    def publish(level, metric, value, retain):
        if value is not None:
            client.publish(f"{args.prefix}/{level}/{metric}", str(value), qos=args.qos, retain=retain)

    port = serial.Serial(args.serial, args.baud, timeout=1)
    while True:
        line = port.readline()
        if not line:
            continue
        received_ns = time.time_ns()
        try:
            data = json.loads(line)
        except ValueError:
            continue
        points = []
        for key, value in data.items():
            if key == "seq":
                publish("stats", "seq", value, False)
            elif key.startswith("n") and key[1:].isdigit() and isinstance(value, dict):
                for short, metric in NODE_METRICS:
                    publish("node" + key[1:], metric, value.get(short), True)
                fields = [(m, float(value[s])) for s, m in NODE_METRICS if value.get(s) is not None]
                points.append(("environment,node=node" + key[1:], fields))
            elif key == "sig" and isinstance(value, dict):
                publish("signal", "rssi", value.get("rssi"), True)
                publish("signal", "snr", value.get("snr"), True)
                points.append(("signal", [("rssi", value.get("rssi")), ("snr", value.get("snr"))]))
            elif key == "stats" and isinstance(value, dict):
                publish("stats", "rx", value.get("rx"), False)
                publish("stats", "crc_err", value.get("crc_err"), False)
        if write_url:
            stats = data.get("stats") or {}
            points.append(("gateway_stats", [("rx", stats.get("rx")), ("crc_err", stats.get("crc_err")), ("seq", data.get("seq"))]))
            write_points(write_url, points, received_ns)


def write_points(url, points, timestamp_ns):
    """One POST /write with the frame's points (ints get the `i` suffix)."""
    lines = []
    for series, fields in points:
        values = ",".join(
            f"{k}={v}i" if isinstance(v, int) else f"{k}={float(v)}"
            for k, v in fields
            if v is not None
        )
        if values:
            lines.append(f"{series} {values} {timestamp_ns}")
    try:
        urllib.request.urlopen(urllib.request.Request(url, data="\n".join(lines).encode()), timeout=5).close()
    except OSError as e:
        print(f"InfluxDB write failed: {e}", flush=True)


if __name__ == "__main__":
    main()
