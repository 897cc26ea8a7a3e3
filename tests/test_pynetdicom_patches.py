"""appliance.dicom.pynetdicom_patches: the guard over what each patch replaces or relies on in
pynetdicom, and what the patches do (on real objects and sockets; the associations themselves
are tested in test_dicom_scp.py and test_qr.py)."""

import copy
import hashlib
import importlib
import inspect
import io
import random
import socket
import threading
import time
import tomllib
from pathlib import Path

import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts

from appliance.codec import p_data_pdus
from appliance.dicom import pynetdicom_patches
from appliance.dicom.pynetdicom_patches import (
    PYNETDICOM_NAP,
    UPSTREAM,
    FastAssociationSocket,
    _hold_at_checkpoint,
    _PausedFlag,
    _WakeableClock,
    _Wakeup,
    install,
    quickly_copied,
)

PINNED = "3.0.4"

# sha256 (first 16 hex digits) of inspect.getsource() of each upstream name the patches replace
# or rely on, at pynetdicom PINNED. After an upgrade, a difference names the patch to revisit:
# read the upstream change, adapt (or drop) the patch, then record the new hash here.
SOURCE_SHA256 = {
    "pynetdicom._config": "c98c80b019811fc0",
    "pynetdicom.transport.AssociationSocket.__init__": "1f0325fdef2cc353",
    "pynetdicom.transport.AssociationSocket.send": "1ea8158c0b51faca",
    "pynetdicom.transport.AssociationSocket.recv": "6bc20a33b1b7cfe7",
    "pynetdicom.transport.AssociationSocket.close": "c726c8db53813d55",
    "pynetdicom.transport.AssociationSocket.ready": "3eb58e3d39dc076d",
    "pynetdicom.dul.DULServiceProvider.__init__": "c82dafa9438ddf70",
    "pynetdicom.dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "pynetdicom.dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "pynetdicom.dul.DULServiceProvider.send_pdu": "7cbce5da8594124e",
    "pynetdicom.dimse.DIMSEServiceProvider.__init__": "bbecd186810e7700",
    "pynetdicom.association.Association.__init__": "eb07516b8009ad8f",
    "pynetdicom.association.Association._run_reactor": "f28838c5559e462a",
    "pynetdicom.association.Association.kill": "8f9713666a7f4cff",
    "pynetdicom.association.Association.release": "c7d713502b77d702",
    "pynetdicom.association.Association.send_c_echo": "664d0e9b0ab20c53",
    "pynetdicom.association.Association.send_c_find": "5879d593298e14b6",
    "pynetdicom.association.Association.send_c_get": "df1f082c59355edc",
    "pynetdicom.association.Association.send_c_move": "eb51b3130c213cf6",
    "pynetdicom.association.Association.send_c_store": "fa5a8127f349f8e7",
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg": "a839cf2fb46976d9",
    "pynetdicom.dimse_messages.DIMSEMessage.encode_msg": "73000c902c52832d",
    "pynetdicom.fsm.DT_1": "82e5c5d4114534fa",
    "pynetdicom.fsm.AR_7": "9a8d68182bf5c9fd",
    "pynetdicom.dsutils.encode": "0d29ffd5d358c45a",
    "pynetdicom.utils.set_uid": "f917a8035170f792",
    "pynetdicom.association.Association._serve_request": "2f24c1759cdf6c8c",
    "pynetdicom.service_class.QueryRetrieveServiceClass._move_scp": "5c14d1be3d737bef",
    "pynetdicom.service_class.QueryRetrieveServiceClass._get_scp": "8ca1538e3e56c4f7",
    "pynetdicom.transport.RequestHandler._create_association": "05c8d12b79863cdb",
    "pynetdicom.presentation.PresentationContext.__init__": "37a8842ac07cd8f3",
    "pynetdicom.transport.AssociationServer.verify_request": "b7e67354b3bc518a",
    "pynetdicom.transport.AssociationServer.get_request": "925a4f3a3042f6e4",
    "pynetdicom.transport.AssociationServer.shutdown_request": "9673c0ac3021d210",
    "pynetdicom.transport.ThreadedAssociationServer.process_request_thread": "9e76e9b9c8a3d8b1",
    "pynetdicom.transport.RequestHandler.handle": "034823fb4df3a874",
    "pynetdicom.association.Association.run_reactor": "ed8bbbe3b3d6ddae",
    "pynetdicom.fsm.AE_5": "35e8617fcc8d3186",
    "pynetdicom.dimse.DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",
    "pynetdicom.dimse.DIMSEServiceProvider.get_msg": "890e3e04283f5aeb",
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": "f51c777e841a76be",
}


def _upstream(name: str):
    """The upstream object of a dotted name, as pynetdicom defines it (past our replacements,
    which keep it as ``__wrapped__``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    for attr in parts[i:]:
        obj = obj.__dict__[attr] if isinstance(obj, type) and attr in obj.__dict__ else getattr(obj, attr)
    if isinstance(obj, property):
        obj = obj.fget
    return inspect.unwrap(obj)


def test_every_patched_upstream_function_is_as_it_was_at_the_pinned_version():
    install()   # after install as before it: the upstream source, not ours
    assert set(SOURCE_SHA256) == set(UPSTREAM), "UPSTREAM and the recorded hashes must name the same things"
    assert all(hasattr(pynetdicom_patches, patch) for patch in UPSTREAM.values())
    changed = []
    for name, recorded in SOURCE_SHA256.items():
        source = inspect.getsource(_upstream(name))
        if hashlib.sha256(source.encode()).hexdigest()[:16] != recorded:
            changed.append(f"{name} changed: revisit {UPSTREAM[name]} in appliance/dicom/pynetdicom_patches.py")
    assert not changed, f"pynetdicom {pynetdicom.__version__} (patches tested on {PINNED}):\n" + "\n".join(changed)


def test_pynetdicom_is_pinned_to_the_tested_minor_version():
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("pynetdicom")]
    assert pins == [f"pynetdicom>={PINNED},<3.1"]
    assert pynetdicom.__version__ == PINNED


def test_install_is_idempotent_and_installs_every_patch():
    """Each patch falls back to pynetdicom's own way when its internals change; this says when
    that happens (after a pynetdicom upgrade) instead of a silent slow-down."""
    import pynetdicom.dimse_messages as messages
    from pynetdicom import _config, association, dimse, fsm, pdu_items, presentation

    install()
    replaced = (association.encode, messages.encode, dimse.DIMSEServiceProvider.send_msg,
                association.Association.send_c_store, association.Association._serve_request,
                pdu_items.set_uid, fsm.ACTIONS["DT-1"][1], association.time,
                dimse.DIMSEServiceProvider.receive_primitive, dimse.DIMSEServiceProvider.get_msg)
    install()
    pynetdicom_patches.install_batched_send()      # and each part on its own
    pynetdicom_patches.install_fast_encode()
    pynetdicom_patches.install_fast_command_encoding()
    pynetdicom_patches.install_remembered_uids()
    pynetdicom_patches.install_store_refusal()
    pynetdicom_patches.install_wakeable_reactor()
    pynetdicom_patches.install_identifier_wait()
    pynetdicom_patches.install_retrieve_refusal()
    assert replaced == (association.encode, messages.encode, dimse.DIMSEServiceProvider.send_msg,
                        association.Association.send_c_store, association.Association._serve_request,
                        pdu_items.set_uid, fsm.ACTIONS["DT-1"][1], association.time,
                        dimse.DIMSEServiceProvider.receive_primitive, dimse.DIMSEServiceProvider.get_msg)
    for f in replaced[:6] + replaced[8:]:
        assert getattr(f, "_pipacs", False)
    assert inspect.unwrap(association.Association.send_c_store).__module__ == "pynetdicom.association"
    assert fsm.ACTIONS["DT-1"][1].__wrapped__ is fsm.DT_1 and fsm.ACTIONS["AR-7"][1].__wrapped__ is fsm.AR_7
    assert isinstance(association.time, _WakeableClock)
    assert isinstance(association.Association.__dict__["_is_paused"], _PausedFlag)
    from pynetdicom.service_class import QueryRetrieveServiceClass
    for name in ("_move_scp", "_get_scp"):   # wrapped once, however often installed
        f = getattr(QueryRetrieveServiceClass, name)
        assert f._pipacs and inspect.unwrap(f).__module__ == "pynetdicom.service_class"
    assert presentation.set_uid is pdu_items.set_uid
    assert _config.LOG_RESPONSE_IDENTIFIERS is False and _config.LOG_REQUEST_IDENTIFIERS is False
    uid = pdu_items.set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    assert uid == "1.2.840.10008.1.2.1" and pdu_items.set_uid("1.2.840.10008.1.2.1", "x") == uid
    for _ in range(2):   # a bad value is refused every time, never remembered
        with pytest.raises(ValueError):
            pdu_items.set_uid("1." * 40, "Abstract Syntax Name")


def test_the_sleep_literals_the_clock_relies_on_are_pynetdiocms():
    """_WakeableClock recognises pynetdicom's waits by their durations."""
    run_reactor = inspect.getsource(_upstream("pynetdicom.association.Association._run_reactor"))
    assert f"time.sleep({PYNETDICOM_NAP})" in run_reactor
    assert f"time.sleep({pynetdicom_patches.PYNETDICOM_KILL_POLL})" in \
        inspect.getsource(_upstream("pynetdicom.association.Association.kill"))
    for name in ("send_c_echo", "send_c_find", "send_c_get", "send_c_move", "send_c_store"):
        source = inspect.getsource(_upstream(f"pynetdicom.association.Association.{name}"))
        assert f"time.sleep({pynetdicom_patches.PYNETDICOM_PAUSE_POLL})" in source, name


def test_supported_contexts_copy_quickly_and_faithfully():
    ae = AE()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    quick = quickly_copied(ae.supported_contexts)
    copies = copy.deepcopy(quick)
    # what makes it quick: the UIDs are shared, not rebuilt and re-validated (pynetdicom's own
    # objects take 40-60 ms for this)
    assert copies[0].abstract_syntax is quick[0].abstract_syntax
    assert copies[0].transfer_syntax[0] is quick[0].transfer_syntax[0]
    for a, b in zip(ae.supported_contexts, copies):
        assert (a.abstract_syntax, a.transfer_syntax, a.scu_role, a.scp_role) == \
            (b.abstract_syntax, b.transfer_syntax, b.scu_role, b.scp_role)
    copies[0].transfer_syntax.append("1.2.3")
    assert "1.2.3" not in quick[0].transfer_syntax


def test_the_reactor_reads_as_paused_only_while_it_is_held():
    """pynetdicom's own flag could say 'paused' while the reactor went on to take the reply a
    sending thread was about to wait for (a C-MOVE then hung for the 30 s DIMSE timeout)."""
    install()
    assoc = Association(AE(), "requestor")
    checkpoint = assoc._reactor_checkpoint
    _hold_at_checkpoint(assoc)

    def reactor_turn():       # what pynetdicom's reactor does on each turn
        assoc._is_paused = True
        checkpoint.wait()
        assoc._is_paused = False

    # the reactor passed the checkpoint just before a sender cleared it: not paused
    assoc._is_paused = True
    assert checkpoint.wait() is True
    checkpoint.clear()
    assert assoc._is_paused is False
    assoc._is_paused = False
    # held at the cleared checkpoint: paused
    turn = threading.Thread(target=reactor_turn)
    turn.start()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.001)
    assert assoc._is_paused is True
    # released by the sender: no longer paused, even before the reactor thread runs again
    checkpoint.set()
    assert assoc._is_paused is False
    checkpoint.clear()
    assert assoc._is_paused is False
    turn.join(5)
    assert not turn.is_alive()
    # a reactor running a service (and sending itself) is paused, set or not
    assoc._is_paused = True
    checkpoint.set()
    assert assoc._is_paused is True


def test_a_napping_reactor_reads_as_paused():
    """After its nap the reactor stops at the checkpoint before it looks at any message, so a
    sender need not wake it and wait for it to get there."""
    flag, wakeup, stop = _PausedFlag(), _Wakeup(), threading.Event()

    def naps():              # the reactor's loop when nothing happens: one nap after another
        while not stop.is_set():
            _WakeableClock(time).sleep(PYNETDICOM_NAP)

    reactor = threading.Thread(target=naps)
    reactor._pipacs_wakeup = wakeup
    assert flag.__get__(reactor) is False
    reactor.start()
    deadline = time.monotonic() + 5
    while not flag.__get__(reactor) and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert flag.__get__(reactor) is True     # napping (for up to IDLE_WAIT, or until woken)
    stop.set()
    wakeup.reactor.set()
    reactor.join(5)
    assert flag.__get__(reactor) is False
    wakeup.close()


def test_a_message_written_in_pieces_arrives_whole():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # many partial writes
    sock = FastAssociationSocket.__new__(FastAssociationSocket)
    sock.socket = a
    data = random.Random(1).randbytes(300_000)
    parts = p_data_pdus(1, b"command", data, 4096) * 2
    expected = b"".join(parts)
    received = bytearray()

    def read():
        while len(received) < len(expected):
            received.extend(b.recv(65536))

    reader = threading.Thread(target=read)
    reader.start()
    sock.send(parts)
    reader.join(10)
    a.close()
    b.close()
    assert bytes(received) == expected


def test_the_named_statuses_mean_what_pynetdicom_says_they_mean():
    """appliance.dicom.statuses against pynetdicom's tables of status descriptions."""
    from pynetdicom import status

    from appliance.dicom import statuses

    expected = {
        "SUCCESS": (status.GENERAL_STATUS, "Success", ""),
        "CANCEL": (status.GENERAL_STATUS, "Cancel", ""),
        "PROCESSING_FAILURE": (status.GENERAL_STATUS, "Failure", "Processing Failure"),
        "SOP_CLASS_NOT_SUPPORTED": (status.GENERAL_STATUS, "Failure", "Refused: SOP Class Not Supported"),
        "NOT_AUTHORIZED": (status.GENERAL_STATUS, "Failure", "Refused: Not Authorised"),
        "OUT_OF_RESOURCES": (status.QR_FIND_SERVICE_CLASS_STATUS, "Failure", "Refused: Out of Resources"),
        "MOVE_DESTINATION_UNKNOWN": (status.QR_MOVE_SERVICE_CLASS_STATUS, "Failure", "Move destination unknown"),
        "IDENTIFIER_MISMATCH": (status.QR_FIND_SERVICE_CLASS_STATUS, "Failure", "Identifier Does Not Match SOP Class"),
        "UNABLE_TO_PROCESS": (status.QR_FIND_SERVICE_CLASS_STATUS, "Failure", "Unable to Process"),
        "CANNOT_UNDERSTAND": (status.STORAGE_SERVICE_CLASS_STATUS, "Failure", "Cannot Understand"),
        "PENDING": (status.QR_FIND_SERVICE_CLASS_STATUS, "Pending", "Matches are continuing, current match supplied"),
        "PENDING_WITH_WARNINGS": (status.QR_FIND_SERVICE_CLASS_STATUS, "Pending", "Matches are continuing, warning"),
        "WARNING": (status.QR_MOVE_SERVICE_CLASS_STATUS, "Warning", "Sub-operations completed, one or more failures"),
    }
    named = {n for n in dir(statuses) if n.isupper()}
    assert named == set(expected)
    for name, (table, category, description) in expected.items():
        code = getattr(statuses, name)
        assert table[code][0] == category, name
        if description is not None:
            assert table[code][1] == description, name
    assert statuses.is_warning(0xB007) and not statuses.is_warning(statuses.SUCCESS)


def test_connection_admission_asks_the_servers_ae_and_admits_without_it():
    """install_connection_admission: the AE's admit_connection decides after the accept; an AE
    without one is pynetdicom's (every connection admitted). The limits themselves, against a
    real listener: test_connections.py."""
    from pynetdicom.transport import AssociationServer

    install()
    verify = AssociationServer.verify_request
    assert getattr(verify, "_pipacs", False)
    asked = []

    class Server:
        ae = AE()

    assert verify(Server(), None, ("127.0.0.1", 1)) is True
    Server.ae.admit_connection = lambda sock, address: asked.append(address) or False
    assert verify(Server(), None, ("127.0.0.9", 2)) is False and asked == [("127.0.0.9", 2)]


# ---------------------------------------------------------------------------- an identifier that never comes

def _request_pdus(kind: str, identifier: Dataset | None) -> tuple:
    """The P-DATA primitives of a C-FIND/C-STORE request on context 1, as pynetdicom encodes them:
    (command, data set) for a request carrying ``identifier`` (a C-STORE's data set)."""
    from pynetdicom import dimse_messages, dimse_primitives
    from pynetdicom.dsutils import encode

    primitive = getattr(dimse_primitives, kind)()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1" if kind == "C_FIND" else "1.2.840.10008.5.1.4.1.1.2"
    primitive.Priority = 2
    if kind == "C_STORE":
        primitive.AffectedSOPInstanceUID = "1.2.3.4"
        primitive.DataSet = io.BytesIO(encode(identifier, True, True))
    else:
        primitive.Identifier = io.BytesIO(encode(identifier, True, True))
    message = getattr(dimse_messages, kind + "_RQ")()
    message.primitive_to_message(primitive)
    pdus = list(message.encode_msg(1, 16382))
    assert [pdv[1][0] & 1 for pdu in pdus for pdv in pdu.presentation_data_value_list] == [1, 0]
    return tuple(pdus)


def _acceptor_dimse():
    assoc = Association(AE(), "acceptor")
    return assoc, assoc.dimse


def test_a_request_whose_identifier_never_comes_is_served_as_one_with_an_empty_identifier(monkeypatch, caplog):
    install()
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    command, data = _request_pdus("C_FIND", query)
    _, dimse = _acceptor_dimse()
    dimse.receive_primitive(command)
    assert dimse.get_msg() == (None, None)             # within the bound: it waits
    caplog.set_level("WARNING", logger="pipacs.dicom")
    dimse.receive_primitive(command)                    # a new command: the first one's identifier is not coming
    context_id, served = dimse.get_msg()
    assert context_id == 1 and served.__class__.__name__ == "C_FIND" and served.MessageID == 7
    assert served.Identifier.getvalue() == b""         # qr.py answers that: no QueryRetrieveLevel
    assert "a new command came first" in caplog.text
    assert dimse.get_msg() == (None, None)             # the second one waits in turn

    monkeypatch.setattr(pynetdicom_patches, "IDENTIFIER_WAIT", 0.0)
    _, dimse = _acceptor_dimse()
    dimse.receive_primitive(command)
    context_id, served = dimse.get_msg()                # its wait is over at once
    assert context_id == 1 and served.MessageID == 7 and served.Identifier.getvalue() == b""
    assert "did not come within 0 s" in caplog.text
    dimse.receive_primitive(data)                       # the late identifier: dropped, not a new message
    assert "arrived after its request was served" in caplog.text
    assert dimse.message is None and dimse.dul.event_queue.empty()   # no Evt19: the association lives on
    assert dimse.get_msg() == (None, None)
    dimse.receive_primitive(command)                    # the next request is served as usual
    dimse.receive_primitive(data)
    context_id, served = dimse.get_msg()
    assert served.MessageID == 7 and served.Identifier.getvalue() == data.presentation_data_value_list[0][1][1:]


def test_an_identifier_in_time_is_served_and_a_c_store_waits_for_its_data(monkeypatch):
    install()
    monkeypatch.setattr(pynetdicom_patches, "IDENTIFIER_WAIT", 0.0)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    command, data = _request_pdus("C_FIND", query)
    _, dimse = _acceptor_dimse()
    both = type(command)()
    both.presentation_data_value_list.extend(command.presentation_data_value_list + data.presentation_data_value_list)
    dimse.receive_primitive(both)                       # command and identifier in one P-DATA
    _, served = dimse.get_msg()
    assert served.Identifier.getvalue() == data.presentation_data_value_list[0][1][1:]
    instance = Dataset()
    instance.PatientID = "X"
    command, data = _request_pdus("C_STORE", instance)
    dimse.receive_primitive(command)
    assert dimse.get_msg() == (None, None)              # a C-STORE's data may lag: never cut short
    dimse.receive_primitive(data)
    _, stored = dimse.get_msg()
    assert stored.__class__.__name__ == "C_STORE" and stored.DataSet.getvalue() == data.presentation_data_value_list[0][1][1:]


def test_patched_send_c_store_still_takes_a_path(tmp_path):
    """The installed patches are process-wide (tests' own clients install them too): a C-STORE of a
    file path, which pynetdicom takes, must still go as pynetdicom sends it (it raised AttributeError
    on the path's missing file_meta)."""
    from pynetdicom import evt

    from .helpers import TEST_FILES
    pynetdicom_patches.install()
    got = []
    scp = AE(ae_title="SINK")
    for cx in AllStoragePresentationContexts:
        scp.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda e: got.append(e.dataset.SOPInstanceUID) or 0)])
    try:
        scu = AE(ae_title="SOURCE")
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = scu.associate("127.0.0.1", server.socket.getsockname()[1], ae_title="SINK")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(TEST_FILES / "CT_small.dcm")
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert status.Status == 0 and len(got) == 1
