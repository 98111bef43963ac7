"""Publishes JSON messages with paho-mqtt (the real Python MQTT client) to the freshet gateway and reports what
the broker acknowledged, as JSON on stdout.

usage: ingest_paho.py HOST PORT PROTOCOL(311|5) QOS COUNT CLIENT_ID TOPIC [tcp|websockets] [PAYLOADS_FILE]
Each message is {"seq": i, "client": CLIENT_ID}, or the lines of PAYLOADS_FILE (COUNT of them) when one is given. Exits non-zero if a publish is not acknowledged in time."""
import json
import sys
import time

import paho.mqtt.client as mqtt


def main():
    host, port, proto, qos, count, client_id, topic = sys.argv[1:8]
    transport = sys.argv[8] if len(sys.argv) > 8 else "tcp"
    lines = open(sys.argv[9]).read().splitlines() if len(sys.argv) > 9 else None
    port, qos, count = int(port), int(qos), int(count)
    protocol = mqtt.MQTTv5 if proto == "5" else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         transport=transport)
    if transport == "websockets":
        client.ws_set_options(path="/mqtt")
    connected = []
    client.on_connect = lambda c, u, flags, rc, props=None: connected.append(str(rc))
    client.connect(host, port, keepalive=30)
    client.loop_start()
    deadline = time.time() + 20
    while not connected and time.time() < deadline:
        time.sleep(0.01)
    infos = []
    for i in range(count):
        payload = lines[i] if lines is not None else json.dumps({"seq": i, "client": client_id})
        infos.append(client.publish(topic, payload, qos=qos))
    for info in infos:
        info.wait_for_publish(timeout=max(0.1, deadline - time.time()))
    published = sum(1 for info in infos if info.is_published())
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"connect": connected, "published": published}))
    sys.exit(0 if published == count else 1)


if __name__ == "__main__":
    main()
