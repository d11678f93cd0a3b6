import { EventEmitter } from 'node:events';
import type { Envelope, EventInput } from './envelope.js';

/**
 * The typed event bus between drivers, rules, Node-RED nodes and the outbox.
 * One emit/on pair per event; listeners are registered with an owner and
 * removed together in the owner's `stop()`.
 */
export interface BusEvents {
  /** A driver/rule/node produced an event; the runtime completes and stores it. */
  'event.input': [EventInput];
  /** The event was stored in the outbox (has `seq`). */
  'event.stored': [Envelope];
  /** Device presence changed (for status and metrics). */
  /** `reason`: why a device is offline (an error code or errno), shown in its node's status. */
  /** `note`: online, but something to check (a card reader's unreadable lines). */
  'device.state': [{ name: string; driver: string; online: boolean; lastSeen?: string; reason?: string; note?: string }];
  /** A verified downlink command, routed to its target driver. */
  command: [{ id: string; action: string; target: string; args: Record<string, unknown> }];
}

type Listener<K extends keyof BusEvents> = (...args: BusEvents[K]) => void;

export class EventBus {
  private readonly emitter = new EventEmitter();
  private readonly owned = new Map<object, Array<[keyof BusEvents, (...args: any[]) => void]>>();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  emit<K extends keyof BusEvents>(event: K, ...args: BusEvents[K]): void {
    this.emitter.emit(event, ...args);
  }

  on<K extends keyof BusEvents>(event: K, owner: object, listener: Listener<K>): void {
    this.emitter.on(event, listener as (...args: any[]) => void);
    let list = this.owned.get(owner);
    if (!list) {
      list = [];
      this.owned.set(owner, list);
    }
    list.push([event, listener as (...args: any[]) => void]);
  }

  /** Remove every listener registered by `owner`. */
  removeOwner(owner: object): void {
    for (const [event, listener] of this.owned.get(owner) ?? []) this.emitter.off(event, listener);
    this.owned.delete(owner);
  }

  listenerCount(event: keyof BusEvents): number {
    return this.emitter.listenerCount(event);
  }
}
