/**
 * One-shot timers a simulator's scripted activity schedules, all cancelled
 * together when the activity stops (the demo's camera script, DoorSim's autoplay).
 */
export function pendingTimers(): { later(ms: number, fn: () => void): void; clear(): void } {
  const timers = new Set<NodeJS.Timeout>();
  return {
    later(ms, fn) {
      const t = setTimeout(() => {
        timers.delete(t);
        fn();
      }, ms);
      timers.add(t);
    },
    clear() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
    },
  };
}
