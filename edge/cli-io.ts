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
