import { connect, type Socket } from 'node:net';
import { SerialPort } from 'serialport';
import { EdgewardError } from '../../edge/errors.js';

/**
 * A byte pipe under a Modbus bus: a serial port or a TCP socket. The bus owns
 * framing, timing and reconnects; a link only opens, moves bytes and reports
 * when it goes away (USB unplug, TCP drop).
 */
export interface ByteLink {
  open(): Promise<void>;
  write(data: Buffer): void;
  close(): Promise<void>;
  /** Called with every received chunk. */
  onData: (chunk: Buffer) => void;
  /** Called once when the link closes without `close()` being called. */
  onLost: (err: Error) => void;
}

export interface SerialLinkOptions {
  path: string;
  baudRate: number;
  parity: 'none' | 'even' | 'odd';
  dataBits?: 8 | 7;
  stopBits?: 1 | 2;
}

export class SerialLink implements ByteLink {
  onData: (chunk: Buffer) => void = () => undefined;
  onLost: (err: Error) => void = () => undefined;
  private port?: SerialPort;
  private closing = false;

  constructor(private readonly opts: SerialLinkOptions) {}

  open(): Promise<void> {
    this.closing = false;
    const port = new SerialPort({
      path: this.opts.path,
      baudRate: this.opts.baudRate,
      parity: this.opts.parity,
      dataBits: this.opts.dataBits ?? 8,
      // Modbus RTU: 11 bits per character, so no parity means two stop bits; many devices accept one.
      stopBits: this.opts.stopBits ?? 1,
      autoOpen: false,
    });
    return new Promise((resolve, reject) => {
      port.open((err) => {
        if (err) {
          reject(
            new EdgewardError('EDGE_MODBUS_OPEN_FAILED', `cannot open ${this.opts.path}: ${err.message}`, {
              cause: err,
            }),
          );
          return;
        }
        this.port = port;
        port.on('data', (chunk: Buffer) => this.onData(chunk));
        // 'error' without a handler would crash the process; a lost device surfaces as 'close'.
        port.on('error', () => undefined);
        port.on('close', (err?: Error) => {
          if (this.port === port) this.port = undefined;
          if (!this.closing) this.onLost(err ?? new Error('serial port closed'));
        });
        resolve();
      });
    });
  }

  write(data: Buffer): void {
    this.port?.write(data);
  }

  close(): Promise<void> {
    this.closing = true;
    const port = this.port;
    this.port = undefined;
    if (!port?.isOpen) return Promise.resolve();
    return new Promise((resolve) => port.close(() => resolve()));
  }
}

export class TcpLink implements ByteLink {
  onData: (chunk: Buffer) => void = () => undefined;
  onLost: (err: Error) => void = () => undefined;
  private socket?: Socket;
  private closing = false;

  constructor(private readonly opts: { host: string; port: number; connectTimeoutMs: number }) {}

  open(): Promise<void> {
    this.closing = false;
    return new Promise((resolve, reject) => {
      const s = connect({ host: this.opts.host, port: this.opts.port, noDelay: true });
      const fail = (err: Error) => {
        s.destroy();
        reject(
          new EdgewardError(
            'EDGE_MODBUS_OPEN_FAILED',
            `cannot connect to ${this.opts.host}:${this.opts.port}: ${err.message}`,
            { cause: err },
          ),
        );
      };
      s.setTimeout(this.opts.connectTimeoutMs, () => fail(new Error('connect timeout')));
      s.once('error', fail);
      s.once('connect', () => {
        s.setTimeout(0);
        s.off('error', fail);
        s.setKeepAlive(true, 10_000);
        this.socket = s;
        s.on('data', (chunk: Buffer) => this.onData(chunk));
        let lastErr: Error | undefined;
        s.on('error', (err) => {
          lastErr = err;
        });
        s.on('close', () => {
          if (this.socket === s) this.socket = undefined;
          if (!this.closing) this.onLost(lastErr ?? new Error('connection closed by peer'));
        });
        resolve();
      });
    });
  }

  write(data: Buffer): void {
    this.socket?.write(data);
  }

  close(): Promise<void> {
    this.closing = true;
    const s = this.socket;
    this.socket = undefined;
    if (!s || s.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      s.once('close', () => resolve());
      s.destroy();
    });
  }
}
