/**
 * Stand in for the disk under a LevelOutbox: replace the write of every
 * LevelDB batch (classic-level's chained batch, `_chainedBatch()` …
 * `_write()`), on the prototype of the store's handle, so a handle the
 * outbox reopens gets it too. Returns the function that puts the real one back.
 */
type Batch = { _write: (options: unknown) => Promise<void> };

export function replaceBatchWrites(
  outbox: object,
  write: (real: (options: unknown) => Promise<void>, options: unknown) => Promise<void>,
): () => void {
  const db = (outbox as { db: object }).db;
  const proto = Object.getPrototypeOf(db) as { _chainedBatch: () => Batch };
  const realChained = proto._chainedBatch;
  proto._chainedBatch = function (this: unknown) {
    const batch = realChained.call(this);
    const realWrite = batch._write;
    batch._write = (options) => write((o) => realWrite.call(batch, o), options);
    return batch;
  };
  return () => {
    proto._chainedBatch = realChained;
  };
}

/** The error LevelDB gives when the disk is full (classic-level's shape of it). */
export function diskFull(): Error {
  return Object.assign(new Error('IO error: No space left on device'), { code: 'LEVEL_IO_ERROR' });
}
