"""What a qnn artifact directory holds, by name (shared by its stages, its session and its figures)."""

ARTIFACT = "model.onnx"  # the QDQ graph with integer I/O, which sessions run
ENCODINGS_FILE = "encodings.json"  # every quantized tensor's scale, offset and bit width
GUARD_FILE = "state_ranges.json"  # each state output's representable range against its state input's
DLC_FILE = "model.dlc"
METADATA_FILE = "qnn.json"  # contract.json's backend_metadata.qnn, the EP-context check and the state ranges
