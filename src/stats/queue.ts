/**
 * A bounded first-in first-out queue on a ring: push, take from the front, drop the oldest, each
 * O(1) per element, so a full queue of 100 000 events costs no copying when one more arrives and
 * the oldest has to go.
 */
export class RingQueue<T> {
  private readonly slots: Array<T | undefined>;
  private head = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer, not ${capacity}`);
    this.slots = new Array<T | undefined>(capacity);
  }

  get size(): number {
    return this.count;
  }

  /** Adds at the back; false (nothing added) when full. */
  push(item: T): boolean {
    if (this.count === this.capacity) return false;
    this.slots[(this.head + this.count) % this.capacity] = item;
    this.count++;
    return true;
  }

  /** Removes the oldest; false when empty. */
  dropOldest(): boolean {
    if (this.count === 0) return false;
    this.slots[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.count--;
    return true;
  }

  /** Removes and returns up to n items from the front, oldest first. */
  take(n: number): T[] {
    const k = Math.min(n, this.count);
    const out: T[] = new Array<T>(k);
    for (let i = 0; i < k; i++) {
      out[i] = this.slots[this.head] as T;
      this.slots[this.head] = undefined;
      this.head = (this.head + 1) % this.capacity;
    }
    this.count -= k;
    return out;
  }
}
