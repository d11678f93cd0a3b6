import type { Driver, DriverContext } from '../drivers/driver.js';
import { EdgewardError } from './errors.js';

/** Builds a driver of one family from node/config properties. Validates `props` and throws EdgewardError on bad ones. */
export type DriverFactory = (name: string, props: Record<string, unknown>, ctx: DriverContext, registry: Registry) => Driver;

/** A shared resource (one Modbus bus per serial port, one Firmata board…) owned by a config node. */
export interface Resource {
  close(): Promise<void>;
}
export type ResourceFactory = (key: string, props: Record<string, unknown>, ctx: DriverContext) => Resource;

/**
 * Device families and shared resources by name. Drivers register here
 * (edge/families.ts lists them) so Node-RED nodes and the runtime build
 * drivers without importing protocol code into node files.
 */
export class Registry {
  private readonly families = new Map<string, DriverFactory>();
  private readonly resourceFactories = new Map<string, ResourceFactory>();
  private readonly resources = new Map<string, { resource: Resource; users: number }>();

  registerFamily(family: string, factory: DriverFactory): void {
    this.families.set(family, factory);
  }

  registerResource(kind: string, factory: ResourceFactory): void {
    this.resourceFactories.set(kind, factory);
  }

  hasFamily(family: string): boolean {
    return this.families.has(family);
  }

  createDriver(family: string, name: string, props: Record<string, unknown>, ctx: DriverContext): Driver {
    const factory = this.families.get(family);
    if (!factory) throw new EdgewardError('EDGE_UNKNOWN_FAMILY', `unknown device family "${family}"`);
    return factory(name, props, ctx, this);
  }

  /**
   * Get or create the shared resource `kind`/`key`; every acquire must be
   * matched by a release, and the resource closes when its last user releases it.
   */
  acquire<T extends Resource>(kind: string, key: string, props: Record<string, unknown>, ctx: DriverContext): { resource: T; release(): Promise<void> } {
    const id = `${kind}:${key}`;
    let entry = this.resources.get(id);
    if (!entry) {
      const factory = this.resourceFactories.get(kind);
      if (!factory) throw new EdgewardError('EDGE_UNKNOWN_RESOURCE', `unknown resource kind "${kind}"`);
      entry = { resource: factory(key, props, ctx), users: 0 };
      this.resources.set(id, entry);
    }
    entry.users++;
    const held = entry;
    let released = false;
    return {
      resource: held.resource as T,
      release: async () => {
        if (released) return;
        released = true;
        held.users--;
        if (held.users === 0 && this.resources.get(id) === held) {
          this.resources.delete(id);
          await held.resource.close();
        }
      },
    };
  }

  /** Look up an already-acquired resource without taking a reference. */
  peek<T extends Resource>(kind: string, key: string): T | undefined {
    return this.resources.get(`${kind}:${key}`)?.resource as T | undefined;
  }
}
