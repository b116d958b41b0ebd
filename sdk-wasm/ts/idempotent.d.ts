// Types of js/idempotent.js (exactly-once-ish handlers).
import type { DeliveryContext, PromEvent } from "./web/promhub.js";

/** Where processed event ids are kept. */
export interface DedupeStore {
  has(id: string): Promise<boolean>;
  add(id: string): Promise<void>;
  purgeExpired(): Promise<number>;
}

export declare const DEFAULT_DEDUPE_TTL_MS: number;

export declare class MemoryDedupeStore implements DedupeStore {
  constructor(options?: { ttlMs?: number; maxEntries?: number });
  has(id: string): Promise<boolean>;
  add(id: string): Promise<void>;
  purgeExpired(): Promise<number>;
}

export declare class IndexedDbDedupeStore implements DedupeStore {
  constructor(options?: { name?: string; scope?: string; ttlMs?: number });
  has(id: string): Promise<boolean>;
  add(id: string): Promise<void>;
  purgeExpired(): Promise<number>;
  close(): void;
}

export interface IdempotentOptions {
  /** Default: a MemoryDedupeStore with `ttlMs`. */
  store?: DedupeStore;
  ttlMs?: number;
}

/** `handler`, run at most once per event (its topic and id). */
export declare function idempotent<T = unknown>(
  handler: (event: PromEvent<T>, ctx: DeliveryContext) => unknown,
  options?: IdempotentOptions,
): (event: PromEvent<T>, ctx: DeliveryContext) => Promise<void>;
