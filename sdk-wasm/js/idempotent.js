// Exactly-once-ish handlers for the browser SDK: `idempotent(handler)` runs
// `handler` at most once per event (topic and id), even when the hub delivers the event
// again (the page reloaded or lost its connection after the handler's work
// but before the ACK). Processed ids are kept in a dedupe store for a TTL:
// in memory (one page's life) or in IndexedDB (survives reloads).
//
// A browser has no transaction that spans the handler's own writes and the
// id record, so the id is recorded right after the handler resolves; a crash
// in between means one more run. Handlers should still be safe to repeat in
// that narrow window (or write with the event id as key).

const DAY_MS = 24 * 60 * 60 * 1000;
/** Default TTL of a processed id: a week, longer than any redelivery. */
export const DEFAULT_DEDUPE_TTL_MS = 7 * DAY_MS;

/** Processed ids in memory; expired ones are dropped as new ones arrive. */
export class MemoryDedupeStore {
  constructor({ ttlMs = DEFAULT_DEDUPE_TTL_MS, maxEntries = 100_000 } = {}) {
    this.ttlMs = ttlMs;
    this.maxEntries = maxEntries;
    this.expiries = new Map();
  }

  async has(id) {
    const expiresAt = this.expiries.get(id);
    if (expiresAt === undefined) return false;
    if (expiresAt > Date.now()) return true;
    this.expiries.delete(id);
    return false;
  }

  async add(id) {
    // Re-inserting keeps the Map in expiry order (same TTL for all).
    this.expiries.delete(id);
    this.expiries.set(id, Date.now() + this.ttlMs);
    this.#purge();
  }

  async purgeExpired() {
    return this.#purge();
  }

  /** Drops expired ids and, over `maxEntries`, the oldest ones. */
  #purge() {
    const now = Date.now();
    let purged = 0;
    // The Map is in expiry order: stop at the first id to keep.
    for (const [id, expiresAt] of this.expiries) {
      if (expiresAt > now && this.expiries.size <= this.maxEntries) break;
      this.expiries.delete(id);
      purged += 1;
    }
    return purged;
  }
}

/** Processed ids in an IndexedDB database: they survive page reloads. */
export class IndexedDbDedupeStore {
  constructor({ name = "promhub-dedupe", scope = "default", ttlMs = DEFAULT_DEDUPE_TTL_MS } = {}) {
    this.name = name;
    this.scope = scope;
    this.ttlMs = ttlMs;
    this.db = null;
  }

  async has(id) {
    const record = await this.#request("readonly", (store) => store.get([this.scope, id]));
    return record !== undefined && record.expiresAt > Date.now();
  }

  async add(id) {
    const expiresAt = Date.now() + this.ttlMs;
    await this.#request("readwrite", (store) => store.put({ scope: this.scope, id, expiresAt }));
  }

  /** Deletes expired ids (of every scope); resolves with how many. */
  async purgeExpired() {
    const db = await this.#open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("processed", "readwrite");
      const range = IDBKeyRange.upperBound(Date.now());
      const cursor = tx.objectStore("processed").index("expiresAt").openCursor(range);
      let purged = 0;
      cursor.onsuccess = () => {
        const current = cursor.result;
        if (!current) return;
        current.delete();
        purged += 1;
        current.continue();
      };
      tx.oncomplete = () => resolve(purged);
      tx.onerror = () => reject(tx.error);
    });
  }

  close() {
    this.db?.close();
    this.db = null;
  }

  async #open() {
    if (this.db) return this.db;
    this.db = await new Promise((resolve, reject) => {
      const request = indexedDB.open(this.name, 1);
      request.onupgradeneeded = () => {
        const store = request.result.createObjectStore("processed", { keyPath: ["scope", "id"] });
        store.createIndex("expiresAt", "expiresAt");
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return this.db;
  }

  async #request(mode, operation) {
    const db = await this.#open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("processed", mode);
      const request = operation(tx.objectStore("processed"));
      let result;
      request.onsuccess = () => {
        result = request.result;
      };
      // Resolve when the transaction is durable, not just the request.
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }
}

/**
 * Wraps a subscription handler so it runs once per event (its topic and
 * id). The wrapped handler resolves (→ ACK) without calling `handler` for an
 * event already processed; a delivery of an id whose handling is still running waits for
 * it. A rejection records nothing (→ NACK, and the next delivery runs the
 * handler again).
 */
export function idempotent(handler, options = {}) {
  if (typeof handler !== "function") throw new TypeError("idempotent(handler): handler must be a function");
  const store = options.store ?? new MemoryDedupeStore(options);
  const running = new Map();
  return async (event, ctx) => {
    // An event is its topic and id: the hub de-duplicates per topic, so the
    // same id on another topic is another event (a publisher of one topic
    // must not make this handler skip another topic's event).
    const id = `${event.topic}\u0000${event.id}`;
    // The same event delivered again while its handling runs: wait for
    // that one (done if it succeeded; if it failed, try again below).
    for (let earlier = running.get(id); earlier; earlier = running.get(id)) {
      if (await earlier.then(() => true, () => false)) return;
    }
    // No await between the check above and this registration, so two
    // deliveries can never both start.
    const handling = (async () => {
      if (await store.has(id)) return;
      await handler(event, ctx);
      await store.add(id);
    })();
    running.set(id, handling);
    try {
      await handling;
    } finally {
      if (running.get(id) === handling) running.delete(id);
    }
  };
}
