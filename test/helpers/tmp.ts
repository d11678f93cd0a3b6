import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh temp directory and a function that removes it (idempotent, never throws). */
export interface TmpDir {
  path: string;
  cleanup(): Promise<void>;
}

/** Create a unique directory under the OS temp dir, named `edgeward-<prefix>-XXXXXX`. */
export async function tmpDir(prefix = 'test'): Promise<TmpDir> {
  const path = await mkdtemp(join(tmpdir(), `edgeward-${prefix}-`));
  return {
    path,
    cleanup: async () => {
      await rm(path, { recursive: true, force: true }).catch(() => undefined);
      // A test whose outbox store is this directory itself: its disk reserve lies beside it.
      await rm(`${path}.reserve`, { force: true }).catch(() => undefined);
    },
  };
}
