"""MQTT subscribers of the freshet gateway, with paho-mqtt (the real Python MQTT client): QoS 0 and 1 subscriptions
of clean sessions (delivered by the gateway itself) next to persistent-session and shared subscriptions (delivered
through rumqttd's router, also on one connection together with the gateway's own), retained messages, overlapping
filters, UNSUBSCRIBE, MQTT 5's no-local option and Receive Maximum.

usage: ingest_subscribe.py HOST PORT PROTOCOL(311|5)
Asserts as it goes (exit 1 with the reason) and prints what each subscriber received as JSON on stdout."""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

DEADLINE = 20.0


def wait(cond, what):
    end = time.time() + DEADLINE
    while not cond():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Client:
    def __init__(self, host, port, proto, cid, clean=True, receive_maximum=None):
        self.proto = proto
        self.got = []
        self.mids = []
        self.subacks = {}
        self.unsubacks = set()
        self.lock = threading.Lock()
        kwargs = {"client_id": cid, "protocol": proto, "manual_ack": receive_maximum is not None}
        if proto != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.connected = []
        self.c.on_connect = lambda c, u, flags, rc, props=None: self.connected.append(str(rc))
        self.c.on_message = self.on_message
        self.c.on_subscribe = lambda c, u, mid, codes, props=None: self.subacks.__setitem__(
            mid, [getattr(r, "value", r) for r in codes])
        self.c.on_unsubscribe = lambda c, u, mid, codes, props=None: self.unsubacks.add(mid)
        if proto == mqtt.MQTTv5:
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if clean else 3600
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            self.c.connect(host, port, keepalive=30, clean_start=clean, properties=props)
        else:
            self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        wait(lambda: self.connected, f"{cid} to connect")

    def on_message(self, c, u, msg):
        with self.lock:
            self.got.append({"topic": msg.topic, "payload": msg.payload.decode(), "retain": bool(msg.retain),
                             "qos": msg.qos})
            self.mids.append(msg.mid)

    def messages(self):
        with self.lock:
            return list(self.got)

    def subscribe(self, topic, qos=0, **options):
        if self.proto == mqtt.MQTTv5:
            res, mid = self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options))
        else:
            res, mid = self.c.subscribe(topic, qos)
        assert res == mqtt.MQTT_ERR_SUCCESS
        wait(lambda: mid in self.subacks, f"SUBACK of {topic}")
        return self.subacks[mid]

    def unsubscribe(self, topic):
        res, mid = self.c.unsubscribe(topic)
        assert res == mqtt.MQTT_ERR_SUCCESS
        wait(lambda: mid in self.unsubacks, f"UNSUBACK of {topic}")

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=DEADLINE)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def ack(self, i):
        """Acknowledge the i-th message received (manual_ack clients)."""
        with self.lock:
            mid, qos = self.mids[i], self.got[i]["qos"]
        self.c.ack(mid, qos)

    def wait_for(self, n, what):
        wait(lambda: len(self.messages()) >= n, f"{n} messages at {what}")
        return self.messages()

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def main():
    host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    proto = mqtt.MQTTv5 if proto == "5" else mqtt.MQTTv311
    tag = "v5" if proto == mqtt.MQTTv5 else "v311"
    pub = Client(host, port, proto, f"pub-{tag}")
    pub.publish("devices/r/telemetry", '{"retained":1}', retain=True)

    direct = Client(host, port, proto, f"direct-{tag}")
    # QoS 1 in a clean session: delivered by the gateway too, at QoS 1 with its own packet ids.
    routed = Client(host, port, proto, f"routed-{tag}")
    overlap = Client(host, port, proto, f"overlap-{tag}")
    assert direct.subscribe("devices/+/telemetry", 0) == [0]
    assert routed.subscribe("devices/+/telemetry", 1) == [1]
    assert overlap.subscribe("devices/#", 0) == [0]
    assert overlap.subscribe("devices/+/telemetry", 0) == [0]
    # The retained message comes first, flagged as retained (once per matching subscription).
    retained = {"topic": "devices/r/telemetry", "payload": '{"retained":1}', "retain": True, "qos": 0}
    assert direct.wait_for(1, "direct")[0] == retained, direct.messages()
    assert routed.wait_for(1, "routed")[0] == dict(retained, qos=1), routed.messages()
    assert overlap.wait_for(2, "overlap")[:2] == [retained, retained], overlap.messages()

    for i in range(5):
        pub.publish("devices/p/telemetry", json.dumps({"seq": i}))
    live = [{"topic": "devices/p/telemetry", "payload": json.dumps({"seq": i}), "retain": False, "qos": 0}
            for i in range(5)]
    assert direct.wait_for(6, "direct")[1:] == live, direct.messages()
    got = routed.wait_for(6, "routed")
    assert [dict(m, qos=0) for m in got[1:]] == live and {m["qos"] for m in got} == {1}, got
    # Overlapping subscriptions of one client: each publish once.
    assert overlap.wait_for(7, "overlap")[2:] == live, overlap.messages()

    # UNSUBSCRIBE is answered, also for a filter never subscribed; nothing arrives for it afterwards: the marker,
    # published after, comes in order behind anything that would have.
    direct.unsubscribe("devices/+/telemetry")
    direct.unsubscribe("never/subscribed")
    assert direct.subscribe("marker/#", 0) == [0]
    pub.publish("devices/p/telemetry", '{"seq":99}')
    pub.publish("marker/x", '{"marker":1}')
    got = direct.wait_for(7, "direct after unsubscribe")
    assert got[6]["topic"] == "marker/x" and len(got) == 7, got
    assert routed.wait_for(7, "routed")[6]["payload"] == '{"seq":99}'

    # A persistent session's subscription goes through the router and keeps what arrives while it is away.
    keeper = Client(host, port, proto, f"keeper-{tag}", clean=False)
    assert keeper.subscribe("stored/+", 1) == [1]
    keeper.stop()
    pub.publish("stored/a", '{"kept":1}')
    keeper = Client(host, port, proto, f"keeper-{tag}", clean=False)
    got = keeper.wait_for(1, "keeper")
    assert got[0]["payload"] == '{"kept":1}', got

    # Clearing the retained message: a new subscriber gets the live publish only.
    pub.publish("devices/r/telemetry", "", retain=True)
    late = Client(host, port, proto, f"late-{tag}")
    assert late.subscribe("devices/+/telemetry", 0) == [0]
    pub.publish("devices/p/telemetry", '{"seq":100}')
    got = late.wait_for(1, "late")
    assert got[0]["payload"] == '{"seq":100}', got

    # One connection with a subscription of each kind: the router's (a shared subscription) and the gateway's own
    # (QoS 1, clean session). Each publish arrives once per subscription, and every PUBACK finds its way back:
    # 150 publishes take the router's packet ids around more than once (it has 100), so a PUBACK sent to the
    # wrong side would stall one of the two.
    mixed = Client(host, port, proto, f"mixed-{tag}")
    assert mixed.subscribe("$share/g/mix/#", 1) == [1]
    assert mixed.subscribe("mix/#", 1) == [1]
    for i in range(150):
        pub.c.publish("mix/a", json.dumps({"n": i}), qos=1)
    got = mixed.wait_for(300, "mixed")
    counts = {}
    for m in got:
        counts[m["payload"]] = counts.get(m["payload"], 0) + 1
    assert len(got) == 300 and set(counts.values()) == {2} and len(counts) == 150, counts
    assert {m["qos"] for m in got} == {1}, got[:3]
    # The two sides' packet ids do not overlap: the router's are 1-100, the gateway's above.
    with mixed.lock:
        low = sum(1 for mid in mixed.mids[:300] if 1 <= mid <= 100)
    assert low == 150, f"{low} of 300 packet ids at or below 100"
    pub.publish("mix/a", '{"n":"last"}')
    assert len(mixed.wait_for(302, "mixed, after")) == 302

    if proto == mqtt.MQTTv5:
        # Receive Maximum: at most 3 QoS 1 publishes wait for this client's PUBACK; the rest wait at the gateway,
        # in order. The QoS 0 marker, published after all of them, does not wait: once it is here, so is
        # everything the window lets through.
        slow = Client(host, port, proto, "slow-v5", receive_maximum=3)
        assert slow.subscribe("win/#", 1) == [1]
        for i in range(10):
            pub.c.publish("win/a", str(i), qos=1)
        pub.publish("win/mark", "mark", qos=0)
        wait(lambda: any(m["topic"] == "win/mark" for m in slow.messages()), "the marker")
        got = [m["payload"] for m in slow.messages() if m["topic"] == "win/a"]
        assert got == ["0", "1", "2"], got
        slow.ack(0)
        assert slow.wait_for(5, "one more after a PUBACK")[4]["payload"] == "3", slow.messages()
        acked = {0}

        def ack_all():
            msgs = slow.messages()
            for i, m in enumerate(msgs):
                if i not in acked and m["qos"] == 1:
                    slow.ack(i)
                    acked.add(i)
            return sum(m["topic"] == "win/a" for m in msgs) == 10
        wait(ack_all, "all ten through the window")
        got = [m["payload"] for m in slow.messages() if m["topic"] == "win/a"]
        assert got == [str(i) for i in range(10)], got
        slow.stop()

        # No-local: a client's own publishes do not come back on a no-local subscription.
        me = Client(host, port, proto, "nolocal-v5")
        assert me.subscribe("self/#", 0, noLocal=True) == [0]
        assert me.subscribe("selfmark/#", 0) == [0]
        me.publish("self/1", '{"own":1}')
        me.publish("selfmark/1", '{"mark":1}')
        got = me.wait_for(1, "no-local")
        assert [m["topic"] for m in got] == ["selfmark/1"], got
        me.stop()

    report = {name: c.messages() for name, c in
              [("direct", direct), ("routed", routed), ("overlap", overlap), ("keeper", keeper), ("late", late),
               ("mixed", mixed)]}
    for c in (pub, direct, routed, overlap, keeper, late, mixed):
        c.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
