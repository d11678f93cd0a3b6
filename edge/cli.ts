#!/usr/bin/env node
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { readOutboxStats, outboxPath } from '../sync/outbox.js';
import { modbusCommands } from './cli-modbus.js';
import { onvifCommands } from './cli-onvif.js';
import { describeConfig, loadConfig } from './config.js';
import type { SiteConfig } from './config-types.js';
import { causeChain, isEdgewardError } from './errors.js';
import { createLogger } from './log.js';
import { Runtime } from './runtime.js';

/**
 * The `edgeward` command line (SPEC.md "CLI (contract)").
 *
 * Each subcommand is one small registration function taking the program;
 * other modules add theirs to {@link COMMANDS} (scan, discover, keygen, sign,
 * central, sim). Exit codes: 0 ok, 1 runtime error, 2 usage or config error.
 */

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

/** A failure that already carries its exit code and message lines. */
export class CliExit extends Error {
  constructor(
    readonly exitCode: number,
    readonly lines: string[] = [],
  ) {
    super(lines.join('\n') || `exit ${exitCode}`);
  }
}

/** Registers one subcommand on the program. */
export type CommandRegistration = (program: Command) => void;

/** Load a config or turn its errors into exit 2 with one error per line; `warnings` receives the valid-but-unwise. */
export function loadConfigOrExit(path: string, warnings?: string[], opts: { storageOnly?: boolean } = {}): SiteConfig {
  try {
    return loadConfig(path, process.env, { warnings, storageOnly: opts.storageOnly });
  } catch (err) {
    if (isEdgewardError(err, 'EDGE_CONFIG_INVALID')) {
      const errors = (err.details?.errors as string[] | undefined) ?? [err.message];
      throw new CliExit(EXIT_USAGE, [`${path}: invalid config`, ...errors.map((e) => `  ${e}`)]);
    }
    throw err;
  }
}

/** The version in package.json (source tree under tsx, or `dist/edge` in the build). */
export function packageVersion(): string {
  let dir = __dirname;
  for (let i = 0; i < 4; i++) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'edgeward') return pkg.version ?? '0.0.0';
    }
    dir = dirname(dir);
  }
  return '0.0.0';
}

const registerStart: CommandRegistration = (program) => {
  program
    .command('start')
    .description('run the edge runtime for a site config')
    .requiredOption('-c, --config <file>', 'site config (YAML)')
    .action(async (opts: { config: string }) => {
      const warnings: string[] = [];
      const config = loadConfigOrExit(opts.config, warnings);
      const log = createLogger({ level: config.log.level });
      for (const w of warnings) log.warn({ config: opts.config }, w);
      // What the box writes (the outbox, flows, node credentials, driver state) is for its own
      // user only: other accounts on the box must not read events or the flow's secrets.
      process.umask(0o077);
      const runtime = new Runtime({ config, log, version: packageVersion() });
      try {
        await runtime.start();
      } catch (err) {
        log.fatal({ err }, 'runtime failed to start');
        throw new CliExit(isEdgewardError(err, 'EDGE_CONFIG_INVALID') ? EXIT_USAGE : EXIT_RUNTIME, [`edgeward: ${(err as Error).message}`]);
      }
      await new Promise<void>((resolve) => {
        let stopping = false;
        const onSignal = (signal: NodeJS.Signals) => {
          if (stopping) {
            // A second signal: the operator does not want to wait for a graceful stop.
            log.warn({ signal }, 'second signal, exiting now');
            process.exit(EXIT_RUNTIME);
          }
          stopping = true;
          log.info({ signal }, 'stopping');
          runtime.stop().finally(resolve);
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      });
    });
};

const registerCheck: CommandRegistration = (program) => {
  program
    .command('check')
    .description('validate a site config and print every error (touches no data)')
    .requiredOption('-c, --config <file>', 'site config (YAML)')
    .action((opts: { config: string }) => {
      const warnings: string[] = [];
      const config = loadConfigOrExit(opts.config, warnings);
      for (const w of warnings) process.stderr.write(`warning: ${w}\n`);
      process.stdout.write(`ok: ${describeConfig(config)}\n`);
    });
};

const registerOutbox: CommandRegistration = (program) => {
  const outbox = program.command('outbox').description('inspect the local outbox');
  outbox
    .command('stats')
    .description('events and bytes held, by severity (works only while the runtime is stopped; needs no secrets)')
    .requiredOption('-c, --config <file>', 'site config (YAML)')
    .option('--json', 'print JSON')
    .action(async (opts: { config: string; json?: boolean }) => {
      // Only the data dir is read: a central engineer reading an epoch needs none of the box's secrets.
      const config = loadConfigOrExit(opts.config, undefined, { storageOnly: true });
      let stats: Awaited<ReturnType<typeof readOutboxStats>>;
      try {
        stats = await readOutboxStats(outboxPath(config.dataDir));
      } catch (err) {
        throw new CliExit(EXIT_RUNTIME, [`edgeward: ${withCause(err)}`]);
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(stats, null, 2)}\n`);
        return;
      }
      const lines = [
        `outbox of ${config.site}/${config.edge} (${outboxPath(config.dataDir)})`,
        `epoch:    ${stats.epoch}`,
        `events:   ${stats.events} (${stats.bytes} bytes of ${stats.maxBytes})`,
        ...(['critical', 'warning', 'info'] as const).map(
          (s) => `  ${s.padEnd(8)} ${stats.bySeverity[s].events} events, ${stats.bySeverity[s].bytes} bytes`,
        ),
        `oldest:   ${stats.oldestTs ?? '-'}`,
        `last seq: ${stats.lastSeq}`,
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
};

const registerDemo: CommandRegistration = (program) => {
  program
    .command('demo')
    .description('run the whole loop in one process: simulated devices, flows, broker, central')
    .option('--port <n>', 'HTTP port of the API and editor (0 picks a free one)', parseIntOption, 1880)
    .option('--data-dir <dir>', 'keep the outbox and flow copy here (default: a temp dir, removed at the end)')
    .option('--duration <s>', 'stop after this many seconds (default: until Ctrl-C)', parseIntOption)
    .option('--door-every <ms>', 'one simulated door activity every MS (0 = none; default 3000)', parseIntOption)
    .option('--camera-every <ms>', 'one simulated camera motion every MS (0 = none; default 8000)', parseIntOption)
    .option('--rate <n>', 'extra synthetic events per second beside the simulators (default 0)', parseIntOption)
    .action(
      async (opts: { port: number; dataDir?: string; duration?: number; doorEvery?: number; cameraEvery?: number; rate?: number }) => {
        // Loaded lazily: the demo pulls in the broker, simulators and Node-RED, which `check` must not pay for.
        const { runDemo } = await import('./demo.js');
        // As `start`: a kept --data-dir holds events, flows and credentials, for this user only.
        process.umask(0o077);
        await runDemo({
          httpPort: opts.port,
          dataDir: opts.dataDir,
          durationMs: opts.duration === undefined ? undefined : opts.duration * 1000,
          doorEveryMs: opts.doorEvery,
          cameraEveryMs: opts.cameraEvery,
          ratePerSec: opts.rate,
        });
      },
    );
};

/** An error's message and its cause's (LevelDB's `IO error: …/LOCK: No such file…`), when the message does not hold it already. */
function withCause(err: unknown): string {
  const e = err as Error;
  // classic-level wraps LevelDB's words in its own ("Database failed to open"): take the innermost.
  const chain = causeChain(err);
  const cause = chain.length > 1 ? chain[chain.length - 1].message : undefined;
  return typeof cause === 'string' && cause !== '' && !e.message.includes(cause) ? `${e.message}: ${cause}` : e.message;
}

/**
 * Commands of the CLI contract that later versions build (SPEC.md "CLI"):
 * listed, with their help, and a clear refusal instead of "unknown command".
 */
const NOT_BUILT: Array<{ name: string; parent?: string; usage: string; what: string }> = [
  { name: 'keygen', usage: '--out <dir>', what: 'make an Ed25519 key pair for signed downlink commands' },
  { name: 'sign', usage: '--key <file> --action <a> --target <t> [--args <json>] [--ttl <s>]', what: 'sign a downlink command' },
  { name: 'central', usage: '--broker <url> [--db <url>]', what: 'run the reference central receiver (PostgreSQL)' },
  { name: 'fire', parent: 'sim', usage: '[options]', what: 'run a simulated fire panel' },
];

const registerNotBuilt: CommandRegistration = (program) => {
  for (const c of NOT_BUILT) {
    const parent = c.parent ? (program.commands.find((p) => p.name() === c.parent) ?? program.command(c.parent)) : program;
    parent
      .command(c.name)
      .description(`${c.what} (not built yet in this version)`)
      .usage(c.usage)
      .allowUnknownOption()
      .allowExcessArguments()
      .action(() => {
        const name = c.parent ? `${c.parent} ${c.name}` : c.name;
        throw new CliExit(EXIT_USAGE, [`edgeward: ${name} is not built yet in this version (README, "Not yet"); the SPEC names it for a later one`]);
      });
  }
};

function parseIntOption(v: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError('must be a non-negative integer');
  return Number(v);
}

/**
 * Device-family commands come as parents (`scan`, `discover`, `sim`) holding
 * one subcommand each; families sharing a parent (`sim door`, `sim camera`)
 * are merged under one.
 */
const registerDeviceCommands: CommandRegistration = (program) => {
  for (const cmd of [...modbusCommands(), ...onvifCommands()]) {
    const existing = program.commands.find((c) => c.name() === cmd.name());
    if (!existing) program.addCommand(cmd);
    else for (const sub of cmd.commands) existing.addCommand(sub);
  }
};

/** Every subcommand. Other modules append their registration here. */
export const COMMANDS: CommandRegistration[] = [
  registerStart,
  registerCheck,
  registerOutbox,
  registerDemo,
  registerDeviceCommands,
  registerNotBuilt,
];

export function buildProgram(): Command {
  const program = new Command('edgeward')
    .description('Edgeward edge gateway runtime')
    .version(packageVersion())
    .exitOverride()
    .showHelpAfterError();
  for (const register of COMMANDS) register(program);
  // Subcommands inherit exitOverride only when set before they are created: set it on all.
  for (const cmd of program.commands) propagateExitOverride(cmd);
  return program;
}

function propagateExitOverride(cmd: Command): void {
  cmd.exitOverride();
  for (const sub of cmd.commands) propagateExitOverride(sub);
}

/** Run the CLI; resolves with the exit code (never calls process.exit itself, except on a second signal). */
export async function main(argv: string[] = process.argv): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return EXIT_OK;
  } catch (err) {
    if (err instanceof CliExit) {
      if (err.lines.length > 0) process.stderr.write(`${err.lines.join('\n')}\n`);
      return err.exitCode;
    }
    if (err instanceof InvalidArgumentError) {
      // Thrown by an action itself (commander prints only what its own parsers reject).
      process.stderr.write(`edgeward: error: ${err.message}\n`);
      return EXIT_USAGE;
    }
    if (isEdgewardError(err)) {
      process.stderr.write(`edgeward: ${err.code}: ${err.message}\n`);
      return EXIT_RUNTIME;
    }
    if (err instanceof CommanderError) {
      // Help and version "errors" are exit 0; anything else is a usage error (already printed).
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    process.stderr.write(`edgeward: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT_RUNTIME;
  }
}

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
      // A library timer left behind (Node-RED, mqtt) must not keep a stopped runtime alive.
      setTimeout(() => process.exit(code), 2000).unref();
    },
    () => {
      process.exitCode = EXIT_RUNTIME;
    },
  );
}
