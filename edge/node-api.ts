import type { Driver, DriverContext } from '../drivers/driver.js';
import type { EventBus } from './bus.js';
import type { Envelope, EventInput } from './envelope.js';
import type { Logger } from './log.js';
import type { Registry } from './registry.js';

/**
 * What the runtime hands to its Node-RED nodes, as `RED.settings.edgeward`.
 * Nodes are thin adapters: they build a driver from their properties,
 * register it here (so its events reach the bus whether or not the node's
 * output is wired) and mirror its events on their output.
 */
export interface EdgewardNodeApi {
  bus: EventBus;
  log: Logger;
  /** A driver context for a device named `device`, with a child logger. */
  driverContext(device: string): DriverContext;
  /** Register a started-by-the-runtime driver (status, metrics, commands). Returns an unregister function. */
  /** Returns the unregister: it resolves once the driver has stopped. */
  registerDriver(driver: Driver): () => Promise<void>;
  /** Store events now and resolve once durable (used by `edgeward-event`). */
  ingest(inputs: EventInput[]): Promise<Envelope[]>;
  /** Device families and shared resources (one Modbus bus per config node, …): `registry.createDriver(...)`, `registry.acquire(...)`. */
  registry: Registry;
  /** Verified downlink commands are routed to registered drivers by `target`; nodes may also listen on `bus` 'command'. */
}

/** Node-RED's runtime object as nodes see it (the small part we use). */
export interface NodeRedRuntime {
  settings: { edgeward?: EdgewardNodeApi } & Record<string, unknown>;
  nodes: {
    createNode(node: unknown, config: unknown): void;
    registerType(type: string, ctor: unknown, opts?: unknown): void;
    getNode(id: string): unknown;
  };
  httpAdmin: { get(path: string, ...handlers: unknown[]): void; post(path: string, ...handlers: unknown[]): void };
}
