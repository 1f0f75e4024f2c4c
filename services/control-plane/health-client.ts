// The standard grpc.health.v1 Check of a peer (page-server, block-server) with a deadline: what
// the leader's host liveness checks ask. One channel per address, reused between checks.
import * as grpc from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { CHANNEL, ClientPool } from "./peer-call.js";

const Health = grpc.makeClientConstructor(
  healthService as unknown as grpc.ServiceDefinition,
  "grpc.health.v1.Health",
);

type CheckFn = (
  req: { service: string },
  md: grpc.Metadata,
  o: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: { status: string | number }) => void,
) => void;

/**
 * A check that failed. `slow`: no answer within the deadline, as from a process that is there
 * but busy (a loaded machine: its connection may still be in its HTTP/2 handshake); a refused
 * or broken connection is not slow.
 */
export class HealthCheckError extends Error {
  constructor(
    message: string,
    readonly slow: boolean,
  ) {
    super(message);
    this.name = "HealthCheckError";
  }
}

class HealthClient {
  private readonly client: grpc.Client & { check: CheckFn };

  constructor(readonly address: string) {
    this.client = new Health(
      address,
      grpc.credentials.createInsecure(),
      CHANNEL,
    ) as unknown as grpc.Client & {
      check: CheckFn;
    };
  }

  /** Resolves when the peer answers SERVING within `deadlineMs`; rejects (HealthCheckError) with why not. */
  check(deadlineMs: number): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.check(
        { service: "" },
        new grpc.Metadata(),
        { deadline: Date.now() + deadlineMs },
        (err, res) => {
          if (err)
            reject(
              new HealthCheckError(err.details || err.message, err.code === grpc.status.DEADLINE_EXCEEDED),
            );
          else if (res?.status !== "SERVING" && res?.status !== 1)
            reject(new Error(`health ${String(res?.status)}`));
          else resolve();
        },
      ),
    );
  }

  close(): void {
    this.client.close();
  }
}

export class HealthClients extends ClientPool<HealthClient> {
  constructor() {
    super((address) => new HealthClient(address));
  }
}
