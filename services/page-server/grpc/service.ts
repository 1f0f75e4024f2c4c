// gRPC PageService over a PageHost.
import type * as grpc from "@grpc/grpc-js";
import {
  type OpenMigrationChannelRequest,
  PageServiceService,
  type StartMigrationRequest,
  type WatchMigrationRequest,
  type WatchMigrationResponse,
} from "../../../gen/vmhop/v1/page.js";
import { failStream, type ServiceRegistration, unary } from "../../common/grpc/server.js";
import { HostError } from "../errors.js";
import type { PageHost } from "../host.js";
import { isFinalPhase } from "../migration/phase.js";
import type { MigrationRecord } from "../migration/record.js";
import {
  channelPathToProto,
  migrationToProto,
  modeFromProto,
  specFromProto,
  startOptionsFromProto,
  vmToProto,
} from "./convert.js";

export function pageService(host: PageHost): ServiceRegistration {
  const outgoing = new Set<string>(); // VMs with a migration under way from here
  const view = (vmId: string) => ({ vm: vmToProto(host.get(vmId), outgoing.has(vmId)) });
  const implementation = {
    defineVm: unary(async (req: { spec?: Parameters<typeof specFromProto>[0] }) => {
      const vm = host.define(specFromProto(req.spec));
      return { vm: vmToProto(vm) };
    }),
    startVm: unary(async (req: { vmId: string }) => {
      await host.start(req.vmId);
      return view(req.vmId);
    }),
    stopVm: unary(async (req: { vmId: string; force: boolean; fencingToken: number }) => {
      await host.stop(req.vmId, req.force, req.fencingToken);
      return view(req.vmId);
    }),
    undefineVm: unary(async (req: { vmId: string }) => {
      host.undefine(req.vmId);
      return {};
    }),
    pauseVm: unary(async (req: { vmId: string }) => {
      await host.get(req.vmId).pause();
      return view(req.vmId);
    }),
    resumeVm: unary(async (req: { vmId: string }) => {
      await host.get(req.vmId).resume();
      return view(req.vmId);
    }),
    inspectVm: unary(async (req: { vmId: string }) => view(req.vmId)),
    listHostVms: unary(async () => ({
      vms: host.list().map((vm) => vmToProto(vm, outgoing.has(vm.spec.name))),
    })),
    prepareIncoming: unary(
      async (req: {
        spec?: Parameters<typeof specFromProto>[0];
        migrationId: string;
        mode: number;
        preempt: boolean;
        fencingToken: number;
      }) => ({
        channelAddress: await host.prepareIncoming(specFromProto(req.spec), req.migrationId, {
          mode: req.mode ? modeFromProto(req.mode) : "auto",
          // proto3 cannot tell false from unset: false leaves it to the source's hello.
          preempt: req.preempt || undefined,
          fencingToken: req.fencingToken,
        }),
      }),
    ),
    openMigrationChannel: unary(async (req: OpenMigrationChannelRequest) => {
      if (!req.start)
        throw new HostError("invalid", "start (the StartMigration to open the channel of) is required");
      const o = startOptionsFromProto(req.start);
      const r = await host.openMigrationChannel(o);
      return { migrationId: o.migrationId, channelPath: channelPathToProto(r.path), rttMs: r.rttMs };
    }),
    startMigration: unary(async (req: StartMigrationRequest) => {
      const rec = await host.startMigration(startOptionsFromProto(req));
      outgoing.add(req.vmId);
      const done = (r: MigrationRecord) => {
        if (isFinalPhase(r.phase)) {
          outgoing.delete(req.vmId);
          rec.events.off("update", done);
        }
      };
      rec.events.on("update", done);
      return { migrationId: rec.id };
    }),
    writeConsole: unary(async (req: { vmId: string; data: Buffer }) => {
      const vm = host.get(req.vmId);
      if (vm.state !== "running")
        throw new HostError(
          "precondition",
          `VM ${req.vmId} is ${vm.state} here: its console takes input only while it runs`,
        );
      await vm.serial.write(req.data);
      return {};
    }),
    describeHost: unary(async () => {
      const q = await host.describe();
      return {
        qemuVersion: q.version,
        accelerator: q.accelerator,
        qemuError: q.error,
        warmReady: host.warm.readyCount(),
        warmMax: host.warm.max,
      };
    }),
    warmIncoming: unary(async (req: { shapes: Parameters<typeof specFromProto>[0][] }) => {
      const shapes = req.shapes.map((s) => specFromProto({ ...s!, vmId: s!.vmId || "shape" }));
      const served = host.setWarmShapes(shapes);
      return { served: served.length, maxWarm: host.warm.max, ready: host.warm.readyCount() };
    }),
    abortMigration: unary(async (req: { migrationId: string; fencingToken: number }) => {
      await host.abortMigration(req.migrationId, req.fencingToken);
      return {};
    }),
    watchMigration: (call: grpc.ServerWritableStream<WatchMigrationRequest, WatchMigrationResponse>) => {
      let rec: MigrationRecord;
      try {
        rec = host.migration(call.request.migrationId);
      } catch (err) {
        failStream(call, err);
        return;
      }
      // Sends the latest state, then each phase change or progress update, ending at a final phase.
      let last = "";
      const send = (r: MigrationRecord) => {
        const msg = migrationToProto(r);
        const key = JSON.stringify(msg);
        if (key !== last) {
          last = key;
          call.write(msg);
        }
        if (isFinalPhase(r.phase)) {
          rec.events.off("update", send);
          call.end();
        }
      };
      rec.events.on("update", send);
      call.on("cancelled", () => rec.events.off("update", send));
      send(rec);
    },
  };
  return {
    name: "vmhop.v1.PageService",
    definition: PageServiceService as unknown as grpc.ServiceDefinition,
    implementation: implementation as unknown as grpc.UntypedServiceImplementation,
  };
}
