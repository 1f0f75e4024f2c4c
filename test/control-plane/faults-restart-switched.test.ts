// Fault matrix (issue 15): the only control-plane (on Redis) of the namespace WAN bed killed
// (kill -9) the moment the whole-VM migration's record enters `switched`, and started again on its
// address; it resumes the migration there and finishes it (FaultBed.controlKilledIn).
import { controlKillRow } from "./faults-bed.js";

controlKillRow("switched");
