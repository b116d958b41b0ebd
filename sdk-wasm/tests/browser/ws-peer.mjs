// A minimal WebSocket server on 127.0.0.1 for scripted peers (the
// transcript test's hub, the dispatch benchmark's event source): the
// upgrade handshake and RFC 6455 framing, nothing else. Node 20 has no
// WebSocket server of its own, and this keeps the tests free of one more
// dependency.
import { createHash } from "node:crypto";
import { createServer } from "node:http";

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;

/** One unmasked server→client frame. */
function frame(opcode, payload) {
  const length = payload.length;
  let header;
  if (length < 126) {
    header = Buffer.from([0x80 | opcode, length]);
  } else if (length < 65_536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = 126;
    header.writeUInt16BE(length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  return Buffer.concat([header, payload]);
}

/** One unmasked server→client text frame. */
export function textFrame(text) {
  return frame(OP_TEXT, Buffer.from(text, "utf8"));
}

/**
 * Splits masked client frames out of `buffer`: returns
 * `[messages, rest]`, each message `{ opcode, payload, fin }`.
 */
function readFrames(buffer) {
  const messages = [];
  let offset = 0;
  for (;;) {
    if (buffer.length - offset < 2) break;
    const fin = (buffer[offset] & 0x80) !== 0;
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
    messages.push({ opcode, payload, fin });
    offset = cursor + length;
  }
  return [messages, buffer.subarray(offset)];
}

/**
 * One accepted connection: `onText(text)` for every text message, then
 * `onClose()` once. `send(text)`, `close(code, reason)`.
 */
class Peer {
  constructor(socket) {
    this.socket = socket;
    this.onText = () => {};
    this.onClose = () => {};
    this.closed = false;
    let pending = Buffer.alloc(0);
    let fragments = [];
    socket.on("data", (chunk) => {
      const [messages, rest] = readFrames(Buffer.concat([pending, chunk]));
      pending = rest;
      for (const { opcode, payload, fin } of messages) {
        if (opcode === OP_CLOSE) {
          this.#ended();
          socket.end();
          return;
        }
        if (opcode === OP_PING) {
          socket.write(frame(0xa, payload));
          continue;
        }
        if (opcode === OP_TEXT || opcode === OP_CONTINUATION) {
          fragments.push(payload);
          if (fin) {
            const text = Buffer.concat(fragments).toString("utf8");
            fragments = [];
            this.onText(text);
          }
        }
      }
    });
    socket.on("close", () => this.#ended());
    socket.on("error", () => socket.destroy());
  }

  #ended() {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }

  send(text) {
    if (!this.socket.destroyed) this.socket.write(textFrame(text));
  }

  /** Writes raw frames (already encoded), resolving once the socket drained. */
  async write(buffer) {
    if (this.socket.destroyed) return;
    if (!this.socket.write(buffer)) {
      await new Promise((resolve) => this.socket.once("drain", resolve));
    }
  }

  close(code, reason) {
    if (this.socket.destroyed) return;
    const reasonBytes = Buffer.from(reason, "utf8");
    const payload = Buffer.alloc(2 + reasonBytes.length);
    payload.writeUInt16BE(code, 0);
    reasonBytes.copy(payload, 2);
    this.socket.write(frame(OP_CLOSE, payload));
    this.socket.end();
  }

  get destroyed() {
    return this.socket.destroyed;
  }
}

/**
 * Listens on 127.0.0.1 (a free port) and calls `onConnection(peer)` for
 * every WebSocket upgrade. Resolves with `{ url, close }`.
 */
export function listenWebSocket(onConnection) {
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
    onConnection(new Peer(socket));
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
