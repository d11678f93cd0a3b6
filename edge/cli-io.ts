import { InvalidArgumentError } from 'commander';

/** Where the device commands (`scan`, `discover`, `sim`) write: tests capture it. */
export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

export const stdio: CliIo = {
  out: (l) => process.stdout.write(`${l}\n`),
  err: (l) => process.stderr.write(`${l}\n`),
};

/** Resolves at the first SIGINT or SIGTERM: a simulator command runs until then. */
export function untilStopSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
}

/** An option parser for integers from `min` to `max` (commander reports the option and exits 2). */
export function intArg(min: number, max: number): (v: string) => number {
  return (v) => {
    const n = /^\s*\d+\s*$/.test(v) ? Number(v) : Number.NaN;
    if (!(n >= min && n <= max)) throw new InvalidArgumentError(`must be an integer from ${min} to ${max}`);
    return n;
  };
}

/** An option parser for a number of seconds above 0 and at most `max`. */
export function secondsArg(max: number): (v: string) => number {
  return (v) => {
    const n = /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : Number.NaN;
    if (!(n > 0 && n <= max)) throw new InvalidArgumentError(`must be a number of seconds above 0, at most ${max}`);
    return n;
  };
}

/** An option parser for `HOST:PORT` (port 1-65535); a bare host gets `defaultPort`. */
export function hostPortArg(defaultPort: number): (v: string) => { host: string; port: number } {
  return (v) => {
    const m = /^(.+):(\d+)$/.exec(v);
    const host = m ? m[1] : v;
    const port = m ? Number(m[2]) : defaultPort;
    if (host === '' || /[\s/]/.test(host)) throw new InvalidArgumentError('must be HOST or HOST:PORT');
    if (!(port >= 1 && port <= 65535)) throw new InvalidArgumentError('the port must be from 1 to 65535');
    return { host, port };
  };
}
