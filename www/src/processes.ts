// The process table model: the latest `process.state` event per key, a
// short CPU history per process, and when exited processes go away.

/** The payload the `process-agent` example publishes. */
export interface ProcessState {
  host: string;
  name: string;
  pid: number;
  /** Percent of one core over the agent's last interval. */
  cpu_percent: number;
  memory_bytes: number;
  status: "alive" | "exited";
  /** Unix ms. */
  started_at?: number;
  /** Unix ms of the agent reading that last saw the process. */
  last_seen?: number;
}

export interface ProcessRow {
  key: string;
  host: string;
  name: string;
  pid: number;
  cpu: number;
  memory: number;
  status: "alive" | "exited";
  /** Unix ms. */
  lastSeen: number;
  /** Newest last, at most HISTORY_POINTS. */
  cpuHistory: number[];
  /** Unix ms of the exit: the agent's last reading of the process. */
  exitedAt?: number;
}

export type SortKey = "host" | "name" | "pid" | "cpu" | "cpuHistory" | "memory" | "status" | "lastSeen";

export const HISTORY_POINTS = 30;

/** Keeps the rows; knows nothing about the DOM. */
export class ProcessTable {
  readonly rows = new Map<string, ProcessRow>();

  /** `exitedTtlMs`: how long an exited process stays (greyed) in the table. */
  constructor(private readonly exitedTtlMs: number) {}

  /** Applies one event; false when it was ignored (malformed or stale). */
  apply(key: string | undefined, payload: unknown, eventTs: number, now: number): boolean {
    const state = parse(payload);
    if (state === null) return false;
    const rowKey = key ?? `${state.host}:${state.name}:${state.pid}`;
    const lastSeen = state.last_seen ?? eventTs;
    const existing = this.rows.get(rowKey);
    if (existing && existing.lastSeen > lastSeen) return false; // out of order
    if (state.status === "exited" && now - lastSeen > this.exitedTtlMs) {
      // An old exit (e.g. from the snapshot): not worth showing.
      this.rows.delete(rowKey);
      return false;
    }
    const cpuHistory = existing?.cpuHistory ?? [];
    if (state.status === "alive") {
      cpuHistory.push(state.cpu_percent);
      if (cpuHistory.length > HISTORY_POINTS) cpuHistory.splice(0, cpuHistory.length - HISTORY_POINTS);
    }
    this.rows.set(rowKey, {
      key: rowKey,
      host: state.host,
      name: state.name,
      pid: state.pid,
      cpu: state.status === "alive" ? state.cpu_percent : 0,
      memory: state.memory_bytes,
      status: state.status,
      lastSeen,
      cpuHistory,
      // The agent's clock may run ahead of the browser's: never later than now.
      exitedAt: state.status === "exited" ? (existing?.exitedAt ?? Math.min(lastSeen, now)) : undefined,
    });
    return true;
  }

  /** Drops exited processes older than the TTL; true when any went. */
  prune(now: number): boolean {
    let removed = false;
    for (const [key, row] of this.rows) {
      if (row.exitedAt !== undefined && now - row.exitedAt > this.exitedTtlMs) {
        this.rows.delete(key);
        removed = true;
      }
    }
    return removed;
  }

  sorted(key: SortKey, descending: boolean, filter: string): ProcessRow[] {
    const needle = filter.trim().toLowerCase();
    const rows = [...this.rows.values()].filter(
      (row) =>
        needle === "" ||
        row.name.toLowerCase().includes(needle) ||
        row.host.toLowerCase().includes(needle) ||
        String(row.pid) === needle,
    );
    const value = (row: ProcessRow): number | string =>
      key === "cpuHistory" ? average(row.cpuHistory) : row[key];
    rows.sort((a, b) => {
      const x = value(a);
      const y = value(b);
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      // Ties: stable by key, so rows do not jump around between renders.
      return (descending ? -order : order) || a.key.localeCompare(b.key);
    });
    return rows;
  }
}

function average(values: number[]): number {
  return values.length === 0 ? 0 : values.reduce((sum, v) => sum + v, 0) / values.length;
}

/** Checks the payload's shape; anything else is ignored, never thrown. */
function parse(payload: unknown): ProcessState | null {
  if (typeof payload !== "object" || payload === null) return null;
  const p = payload as Record<string, unknown>;
  const isNum = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
  if (typeof p.host !== "string" || typeof p.name !== "string" || !isNum(p.pid)) return null;
  if (p.status !== "alive" && p.status !== "exited") return null;
  return {
    host: p.host,
    name: p.name,
    pid: p.pid,
    cpu_percent: isNum(p.cpu_percent) ? p.cpu_percent : 0,
    memory_bytes: isNum(p.memory_bytes) ? p.memory_bytes : 0,
    status: p.status,
    started_at: isNum(p.started_at) ? p.started_at : undefined,
    last_seen: isNum(p.last_seen) ? p.last_seen : undefined,
  };
}
