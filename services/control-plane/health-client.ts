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

  /** Resolves when the peer answers SERVING within `deadlineMs`; rejects with why not. */
  check(deadlineMs: number): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.check(
        { service: "" },
        new grpc.Metadata(),
        { deadline: Date.now() + deadlineMs },
        (err, res) => {
          if (err) reject(new Error(err.details || err.message));
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
