// DOM rendering of the process table and the connection indicator.
import type { StateEvent } from "promhub";

import { HISTORY_POINTS, type ProcessRow, type ProcessTable, type SortKey } from "./processes";

const SPARK_WIDTH = 90;
const SPARK_HEIGHT = 18;

export class TableView {
  private sortKey: SortKey = "cpu";
  private descending = true;
  private filter = "";
  private readonly rowElements = new Map<string, HTMLTableRowElement>();

  constructor(
    private readonly table: ProcessTable,
    private readonly body: HTMLTableSectionElement,
    private readonly headers: NodeListOf<HTMLTableCellElement>,
    private readonly empty: HTMLElement,
    private readonly summary: HTMLElement,
    private readonly onChange: () => void,
  ) {
    for (const header of headers) {
      header.addEventListener("click", () => {
        const key = header.dataset.sort as SortKey;
        if (this.sortKey === key) this.descending = !this.descending;
        else {
          this.sortKey = key;
          this.descending = key === "cpu" || key === "memory" || key === "cpuHistory" || key === "lastSeen";
        }
        this.onChange();
      });
    }
  }

  setFilter(filter: string): void {
    this.filter = filter;
    this.onChange();
  }

  render(now: number): void {
    const rows = this.table.sorted(this.sortKey, this.descending, this.filter);
    for (const header of this.headers) {
      if (header.dataset.sort === this.sortKey) {
        header.setAttribute("aria-sort", this.descending ? "descending" : "ascending");
      } else header.removeAttribute("aria-sort");
    }
    const keep = new Set(rows.map((row) => row.key));
    for (const [key, element] of this.rowElements) {
      if (!keep.has(key)) {
        element.remove();
        this.rowElements.delete(key);
      }
    }
    let previous: Element | null = null;
    for (const row of rows) {
      let element = this.rowElements.get(row.key);
      if (!element) {
        element = createRow();
        this.rowElements.set(row.key, element);
      }
      fillRow(element, row, now);
      const expected: Element | null = previous ? previous.nextElementSibling : this.body.firstElementChild;
      if (expected !== element) this.body.insertBefore(element, expected);
      previous = element;
    }
    const alive = [...this.table.rows.values()].filter((row) => row.status === "alive");
    const hosts = new Set(alive.map((row) => row.host));
    this.summary.textContent = `${alive.length} running on ${hosts.size} host${hosts.size === 1 ? "" : "s"}, ${
      this.table.rows.size - alive.length
    } exited`;
    this.empty.hidden = this.table.rows.size > 0;
  }
}

function createRow(): HTMLTableRowElement {
  const tr = document.createElement("tr");
  for (const cls of ["host", "name", "pid num", "cpu num", "spark", "memory num", "status", "seen num"]) {
    const td = document.createElement("td");
    td.className = cls;
    tr.append(td);
  }
  return tr;
}

function fillRow(tr: HTMLTableRowElement, row: ProcessRow, now: number): void {
  tr.dataset.key = row.key;
  tr.dataset.pid = String(row.pid);
  tr.dataset.status = row.status;
  tr.className = row.status === "exited" ? "exited" : "";
  const cells = tr.cells;
  setText(cells[0], row.host);
  setText(cells[1], row.name);
  cells[1].title = row.name;
  setText(cells[2], String(row.pid));
  setText(cells[3], row.status === "alive" ? row.cpu.toFixed(1) : "–");
  const spark = sparkline(row.cpuHistory);
  if (cells[4].dataset.points !== spark) {
    cells[4].dataset.points = spark;
    cells[4].innerHTML = `<svg width="${SPARK_WIDTH}" height="${SPARK_HEIGHT}" aria-hidden="true"><polyline points="${spark}"/></svg>`;
  }
  setText(cells[5], formatBytes(row.memory));
  setText(cells[6], row.status === "alive" ? "running" : "exited");
  cells[6].className = `status status-${row.status}`;
  setText(cells[7], formatAge(now - row.lastSeen));
}

function setText(cell: HTMLTableCellElement, text: string): void {
  if (cell.textContent !== text) cell.textContent = text;
}

/** SVG points of a CPU history, scaled to its own maximum (at least 1 %). */
export function sparkline(values: number[]): string {
  if (values.length === 0) return "";
  const max = Math.max(1, ...values);
  const step = SPARK_WIDTH / (HISTORY_POINTS - 1);
  const offset = (HISTORY_POINTS - values.length) * step;
  return values
    .map((value, i) => {
      const x = offset + i * step;
      const y = SPARK_HEIGHT - 1 - (value / max) * (SPARK_HEIGHT - 2);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatAge(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  return `${Math.floor(minutes / 60)} h ago`;
}

/** The connection indicator: connected / connecting / reconnecting in N s / closed. */
export class ConnectionView {
  private reconnectAt: number | undefined;

  constructor(private readonly element: HTMLElement) {}

  update(event: StateEvent): void {
    this.reconnectAt = event.reconnect?.at;
    this.element.dataset.state = event.reconnect ? "reconnecting" : event.state;
    this.element.title = event.reason;
    this.tick(Date.now());
  }

  /** Called every second to count the reconnect delay down. */
  tick(now: number): void {
    const state = this.element.dataset.state;
    let text: string;
    if (state === "reconnecting" && this.reconnectAt !== undefined) {
      const seconds = Math.max(0, Math.ceil((this.reconnectAt - now) / 1000));
      text = `reconnecting in ${seconds} s`;
    } else if (state === "connected") text = "connected";
    else if (state === "closed") text = "disconnected";
    else text = "connecting…";
    if (this.element.textContent !== text) this.element.textContent = text;
  }
}
