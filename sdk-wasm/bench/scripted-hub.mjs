// A scripted WebSocket peer for the dispatch benchmark: speaks just enough
// of the protocol (OK, SUBACK) to let a client subscribe, then sends a burst
// of pre-encoded EVENT frames as fast as the socket takes them. Not a hub:
// it measures the client's receive path (browser WebSocket → wasm decode
// and routing → JS handler), not a hub's delivery rate.
import { listenWebSocket, textFrame } from "../tests/browser/ws-peer.mjs";

/**
 * Starts the peer. `events(topic, group)` returns the frames (strings) to
 * send after a SUBACK. Resolves with `{ url, close }`.
 */
export function startScriptedHub(events) {
  return listenWebSocket((peer) => {
    peer.onText = (text) => {
      const frame = JSON.parse(text);
      if (frame.op === "AUTH") {
        peer.send(JSON.stringify({ op: "OK", v: 1, session: "bench", server: "scripted", heartbeat_ms: 0 }));
      } else if (frame.op === "SUBSCRIBE") {
        const ack = { op: "SUBACK", rid: frame.rid, topic: frame.topic, from_seq: 1 };
        if (frame.group) ack.group = frame.group;
        peer.send(JSON.stringify(ack));
        void sendAll(peer, events(frame.topic, frame.group ?? null));
      } else if (frame.op === "PING") {
        peer.send(JSON.stringify({ op: "PONG", rid: frame.rid }));
      }
    };
  });
}

/** Writes frames in batches, waiting for the socket to drain. */
async function sendAll(peer, frames) {
  const BATCH = 512;
  for (let i = 0; i < frames.length; i += BATCH) {
    await peer.write(Buffer.concat(frames.slice(i, i + BATCH).map(textFrame)));
    if (peer.destroyed) return;
  }
}
