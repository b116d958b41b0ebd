// A scripted WebSocket peer for the dispatch benchmark: speaks just enough
// of the protocol (OK, SUBACK) to let a client subscribe, then sends a burst
// of pre-encoded EVENT frames as fast as the socket takes them. Not a hub:
// it measures the client's receive path (browser WebSocket → wasm decode
// and routing → JS handler), not a hub's delivery rate.
import { createHash } from "node:crypto";
import { createServer } from "node:http";

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** One unmasked server→client text frame. */
export function textFrame(text) {
  const payload = Buffer.from(text, "utf8");
  const length = payload.length;
  let header;
  if (length < 126) {
    header = Buffer.from([0x81, length]);
  } else if (length < 65_536) {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 126;
    header.writeUInt16BE(length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x81;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  return Buffer.concat([header, payload]);
}

/** Splits masked client frames out of `buffer`; returns [texts, rest]. */
function readClientFrames(buffer) {
  const texts = [];
  let offset = 0;
  for (;;) {
    if (buffer.length - offset < 2) break;
    const opcode = buffer[offset] & 0x0f;
    let length = buffer[offset + 1] & 0x7f;
    let cursor = offset + 2;
    if (length === 126) {
      if (buffer.length - cursor < 2) break;
      length = buffer.readUInt16BE(cursor);
      cursor += 2;
    } else if (length === 127) {
      if (buffer.length - cursor < 8) break;
      length = Number(buffer.readBigUInt64BE(cursor));
      cursor += 8;
    }
    if (buffer.length - cursor < 4 + length) break;
    const mask = buffer.subarray(cursor, cursor + 4);
    cursor += 4;
    const payload = Buffer.from(buffer.subarray(cursor, cursor + length));
    for (let i = 0; i < payload.length; i += 1) payload[i] ^= mask[i % 4];
    if (opcode === 0x1) texts.push(payload.toString("utf8"));
    if (opcode === 0x8) texts.push(null); // close
    offset = cursor + length;
  }
  return [texts, buffer.subarray(offset)];
}

/**
 * Starts the peer. `events(topic, group)` returns the frames (strings) to
 * send after a SUBACK. Resolves with `{ url, close }`.
 */
export function startScriptedHub(events) {
  const sockets = new Set();
  const server = createServer((_, response) => response.writeHead(426).end());
  server.on("upgrade", (request, socket) => {
    const key = request.headers["sec-websocket-key"];
    const accept = createHash("sha1").update(key + WS_GUID).digest("base64");
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    let pending = Buffer.alloc(0);
    socket.on("data", (chunk) => {
      const [texts, rest] = readClientFrames(Buffer.concat([pending, chunk]));
      pending = rest;
      for (const text of texts) {
        if (text === null) {
          socket.end();
          return;
        }
        const frame = JSON.parse(text);
        if (frame.op === "AUTH") {
          socket.write(
            textFrame(JSON.stringify({ op: "OK", v: 1, session: "bench", server: "scripted", heartbeat_ms: 0 })),
          );
        } else if (frame.op === "SUBSCRIBE") {
          const ack = { op: "SUBACK", rid: frame.rid, topic: frame.topic, from_seq: 1 };
          if (frame.group) ack.group = frame.group;
          socket.write(textFrame(JSON.stringify(ack)));
          void sendAll(socket, events(frame.topic, frame.group ?? null));
        } else if (frame.op === "PING") {
          socket.write(textFrame(JSON.stringify({ op: "PONG", rid: frame.rid })));
        }
      }
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        url: `ws://127.0.0.1:${port}/ws`,
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(done);
          }),
      });
    });
  });
}

/** Writes frames in batches, waiting for the socket to drain. */
async function sendAll(socket, frames) {
  const BATCH = 512;
  for (let i = 0; i < frames.length; i += BATCH) {
    const chunk = Buffer.concat(frames.slice(i, i + BATCH).map(textFrame));
    if (!socket.write(chunk)) {
      await new Promise((resolve) => socket.once("drain", resolve));
    }
    if (socket.destroyed) return;
  }
}
