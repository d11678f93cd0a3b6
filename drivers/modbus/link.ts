import { readSync, writeSync } from 'node:fs';
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

/** The parts of serialport's Linux/macOS binding that direct I/O needs (duck-typed: not part of its typed API). */
interface UnixBinding {
  fd: number | null;
  poller: { once(event: 'readable', cb: (err: Error | null) => void): unknown };
}

function unixBinding(port: SerialPort): UnixBinding | undefined {
  const b = (port as unknown as { port?: Partial<UnixBinding> }).port;
  return b && typeof b.fd === 'number' && typeof b.poller?.once === 'function'
    ? (b as UnixBinding)
    : undefined;
}

function isAgain(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR';
}

/**
 * Byte I/O on an open serial port. serialport's stream moves every read and
 * every write through the libuv thread pool (fs.read/fs.write plus promise
 * hops): measured on the socat PTY bench, master and simulator together lost
 * about 0.2 ms per transaction to it, 10 % of a short request/reply's wire
 * time at 115200 baud. On Linux and macOS this reads and
 * writes the port's (non-blocking) descriptor directly from the event loop,
 * woken by serialport's own poller; elsewhere it falls back to the stream.
 * A read or write error other than "try again" is a lost device: the port is
 * closed and `onLost` called once.
 */
export class SerialPortIo {
  onData: (chunk: Buffer) => void = () => undefined;
  onLost: (err: Error) => void = () => undefined;
  private readonly binding?: UnixBinding;
  private readonly pool = Buffer.allocUnsafe(4096);
  private stopped = false;
  private lostErr?: Error;
  /** Writes queued on the stream after the descriptor was full: later ones must queue behind them. */
  private streamWrites = 0;

  constructor(private readonly port: SerialPort) {
    this.binding = unixBinding(port);
  }

  start(): void {
    // 'error' without a handler would crash the process; a lost device surfaces as 'close'.
    this.port.on('error', () => undefined);
    this.port.on('close', (err?: Error) => {
      if (!this.stopped) {
        this.stopped = true;
        this.onLost(this.lostErr ?? err ?? new Error('serial port closed'));
      }
    });
    if (this.binding) this.armRead();
    else this.port.on('data', (chunk: Buffer) => this.onData(chunk));
  }

  write(data: Buffer): void {
    const fd = this.binding?.fd;
    if (typeof fd !== 'number' || this.streamWrites > 0) {
      this.streamWrite(data);
      return;
    }
    let written = 0;
    try {
      written = writeSync(fd, data);
    } catch (err) {
      if (!isAgain(err)) {
        this.lose(err as Error);
        return;
      }
    }
    if (written < data.length) this.streamWrite(data.subarray(written));
  }

  /** Stop delivering data and lost events; the owner closes the port. */
  stop(): void {
    this.stopped = true;
  }

  private streamWrite(data: Buffer): void {
    this.streamWrites++;
    this.port.write(data, () => {
      this.streamWrites--;
    });
  }

  private armRead(): void {
    this.binding?.poller.once('readable', (err) => {
      if (this.stopped) return;
      if (err) {
        // The poller cancels with an error when the port closes; otherwise the device is gone.
        if (!(err as { canceled?: boolean }).canceled) this.lose(err);
        return;
      }
      this.readNow();
    });
  }

  private readNow(): void {
    const fd = this.binding?.fd;
    if (typeof fd !== 'number') return;
    let n: number;
    try {
      n = readSync(fd, this.pool, 0, this.pool.length, null);
    } catch (err) {
      if (isAgain(err)) this.armRead();
      else this.lose(err as Error);
      return;
    }
    // A tty read returns 0 only after a hang-up (the port is non-blocking with VMIN=1).
    if (n === 0) {
      this.lose(new Error('serial port hung up'));
      return;
    }
    const chunk = Buffer.allocUnsafe(n);
    this.pool.copy(chunk, 0, 0, n);
    // Re-arm before delivering, so a handler that closes the port cancels the new poll cleanly.
    this.armRead();
    this.onData(chunk);
  }

  private lose(err: Error): void {
    if (this.stopped || this.lostErr) return;
    this.lostErr = err;
    if (this.port.isOpen) this.port.close();
    else {
      this.stopped = true;
      this.onLost(err);
    }
  }
}

export class SerialLink implements ByteLink {
  onData: (chunk: Buffer) => void = () => undefined;
  onLost: (err: Error) => void = () => undefined;
  private port?: SerialPort;
  private io?: SerialPortIo;

  constructor(private readonly opts: SerialLinkOptions) {}

  open(): Promise<void> {
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
        const io = new SerialPortIo(port);
        this.io = io;
        io.onData = (chunk) => this.onData(chunk);
        io.onLost = (lost) => {
          if (this.port === port) this.port = undefined;
          if (this.io === io) this.io = undefined;
          this.onLost(lost);
        };
        io.start();
        resolve();
      });
    });
  }

  write(data: Buffer): void {
    this.io?.write(data);
  }

  close(): Promise<void> {
    this.io?.stop();
    this.io = undefined;
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
      // The handler first: setTimeout can throw (a bad timeout), and an error event without a handler kills the process.
      s.once('error', fail);
      s.setTimeout(this.opts.connectTimeoutMs, () => fail(new Error('connect timeout')));
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
