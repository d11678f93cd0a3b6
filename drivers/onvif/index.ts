import { EdgewardError } from '../../edge/errors.js';
import type { Registry } from '../../edge/registry.js';
import { type DiscoveredCamera, type DiscoverOptions, discoverOnvif } from './discovery.js';
import { OnvifCameraDriver, type OnvifCameraProps } from './driver.js';

export { type CameraInfo, OnvifClient, type OnvifClientOptions } from './client.js';
export { type DescribedCamera, type DiscoveredCamera, type DiscoverOptions, discoverAndDescribe, discoverOnvif } from './discovery.js';
export { OnvifCameraDriver, type OnvifCameraProps, type OnvifHealth } from './driver.js';
export { mapNotification } from './topics.js';

/** Family name in the registry (node `edgeward-camera`). */
export const ONVIF_FAMILY = 'onvif-camera';

const NUMERIC = ['port', 'timeoutMs', 'subscriptionS', 'renewAt', 'pullTimeoutS', 'backoffMinMs', 'backoffMaxMs', 'offlineAfter', 'maxXmlBytes'] as const;

/** Why a username is refused (see isCameraUsername). */
export const CAMERA_USERNAME_RULE = 'must not contain a double quote, a backslash or a control character (HTTP Digest cannot carry them)';

/** HTTP Digest (RFC 7616) sends the name as a quoted string, and onvif quotes it without escaping. */
export function isCameraUsername(u: string): boolean {
  return !/["\\\p{Cc}]/u.test(u);
}

/** Validate node/config properties into OnvifCameraProps; errors name the property. */
export function parseCameraProps(props: Record<string, unknown>): OnvifCameraProps {
  const bad = (path: string, why: string) => new EdgewardError('EDGE_CONFIG_INVALID', `${path} ${why}`, { details: { path } });
  const host = props.host;
  if (typeof host !== 'string' || host.trim() === '') throw bad('host', 'must be a non-empty string');
  const out: OnvifCameraProps = { host: host.trim() };
  for (const k of NUMERIC) {
    const v = props[k];
    if (v === undefined || v === null || v === '') continue;
    const n = typeof v === 'number' ? v : Number(v);
    if (!Number.isFinite(n) || n <= 0) throw bad(k, 'must be a positive number');
    out[k] = n;
  }
  if (out.port !== undefined && (!Number.isInteger(out.port) || out.port > 65535)) throw bad('port', 'must be an integer 1-65535');
  if (out.renewAt !== undefined && (out.renewAt <= 0 || out.renewAt >= 1)) throw bad('renewAt', 'must be between 0 and 1');
  for (const k of ['path', 'username', 'password'] as const) {
    const v = props[k];
    if (v === undefined || v === null || v === '') continue;
    if (typeof v !== 'string') throw bad(k, 'must be a string');
    out[k] = v;
  }
  if (out.username !== undefined && !isCameraUsername(out.username)) throw bad('username', CAMERA_USERNAME_RULE);
  return out;
}

/** Resource kind giving Node-RED nodes WS-Discovery without importing protocol code (`registry.acquire(ONVIF_DISCOVERY, …)`). */
export const ONVIF_DISCOVERY = 'onvif-discovery';

/** The discovery resource: stateless, so `close()` has nothing to release. */
export interface OnvifDiscoveryResource {
  discover(opts: DiscoverOptions): Promise<DiscoveredCamera[]>;
  close(): Promise<void>;
}

/** Register the ONVIF camera family and the discovery resource. */
export function register(registry: Registry): void {
  registry.registerFamily(ONVIF_FAMILY, (name, props, ctx) => new OnvifCameraDriver(name, parseCameraProps(props), ctx));
  registry.registerResource(ONVIF_DISCOVERY, (): OnvifDiscoveryResource => ({ discover: (opts) => discoverOnvif(opts), close: async () => undefined }));
}
