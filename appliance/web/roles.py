"""The one role table: for every route and method, who may call it.

``ANYONE``: no sign-in ever (the pages' shell, so a sign-in form can load; signing in).
``STUDENT``: reading what the teacher published (the archive filters what a student sees).
``DOWNLOAD``: a student while the teacher allows downloads (``StudentDownloads``).
``TEACHER``: everything that changes state or reaches out (uploads, deletes, anonymize and
modify, labels and notes, protection, modalities and sending, the audit trail).

Keys are (method, route as aiohttp spells it); HEAD follows GET. A route missing here is
refused for everyone, and ``tests/test_access.py`` walks the application's router so that a
new route cannot be added without a line here.
"""

from __future__ import annotations

from .access import DOWNLOAD, By, Need, Role

ANYONE, STUDENT, TEACHER = Role.ANYONE, Role.STUDENT, Role.TEACHER

ROUTE_NEEDS: dict[tuple[str, str], Need] = {
    # pages and their files: the shell loads for anyone, its data needs a role
    ("GET", "/"): ANYONE,
    ("GET", "/app/explorer.html"): ANYONE,
    ("GET", "/app/{name}"): ANYONE,
    ("GET", "/favicon.ico"): ANYONE,
    ("GET", "/viewer/{series}"): ANYONE,
    ("GET", "/join"): ANYONE,                     # a teaching session's join page: before any seat or sign-in
    # signing in (access.routes)
    ("GET", "/pipacs/session"): ANYONE,
    ("POST", "/pipacs/sign-in"): ANYONE,
    ("POST", "/pipacs/sign-out"): ANYONE,
    ("POST", "/pipacs/join"): ANYONE,
    ("POST", "/pipacs/password"): TEACHER,
    ("GET", "/pipacs/audit"): TEACHER,
    ("GET", "/pipacs/room-code"): TEACHER,
    # the appliance
    ("GET", "/system"): STUDENT,
    ("GET", "/pipacs/status"): STUDENT,
    ("GET", "/pipacs/qr.svg"): STUDENT,
    ("GET", "/statistics"): TEACHER,
    ("GET", "/changes"): TEACHER,
    # resources (students see only what is published: the archive filters)
    ("GET", "/{level}"): STUDENT,
    ("GET", "/{level}/{id}"): STUDENT,
    ("DELETE", "/{level}/{id}"): TEACHER,
    ("GET", "/{level}/{id}/{rel}"): STUDENT,
    ("GET", "/{level}/{id}/statistics"): TEACHER,       # a patient's counts include unpublished studies
    ("GET", "/{level}/{id}/shared-tags"): STUDENT,      # read from the instances a student may see
    ("GET", "/{level}/{id}/instances-tags"): STUDENT,
    ("GET", "/{level}/{id}/module"): STUDENT,
    ("GET", "/studies/{id}/module-patient"): STUDENT,
    ("GET", "/{level}/{id}/{kind}"): DOWNLOAD,            # archive, media
    ("POST", "/{level}/{id}/{kind}"): DOWNLOAD,
    ("POST", "/{level}/{id}/{action}"): TEACHER,          # anonymize, modify
    ("POST", "/instances/{id}/{action}"): TEACHER,
    ("GET", "/pipacs/deidentification"): TEACHER,        # the teacher's anonymization defaults
    ("PUT", "/pipacs/deidentification"): TEACHER,
    ("GET", "/{level}/{id}/labels"): STUDENT,
    ("GET", "/{level}/{id}/labels/{label}"): STUDENT,
    ("PUT", "/{level}/{id}/labels/{label}"): TEACHER,
    ("DELETE", "/{level}/{id}/labels/{label}"): TEACHER,
    ("GET", "/{level}/{id}/metadata"): TEACHER,           # reception details: the teacher's
    ("GET", "/{level}/{id}/metadata/{name}"): TEACHER,
    ("PUT", "/{level}/{id}/metadata/{name}"): TEACHER,
    ("DELETE", "/{level}/{id}/metadata/{name}"): TEACHER,
    ("GET", "/patients/{id}/protected"): TEACHER,
    ("PUT", "/patients/{id}/protected"): TEACHER,
    ("POST", "/instances"): TEACHER,
    # one instance: viewing is reading
    ("GET", "/instances/{id}/file"): STUDENT,
    ("GET", "/instances/{id}/tags"): STUDENT,
    ("GET", "/instances/{id}/simplified-tags"): STUDENT,
    ("GET", "/instances/{id}/header"): STUDENT,
    ("GET", "/instances/{id}/content{path}"): STUDENT,
    ("GET", "/instances/{id}/frames"): STUDENT,
    ("GET", "/instances/{id}/preview"): STUDENT,
    ("GET", "/instances/{id}/rendered"): STUDENT,
    ("GET", "/instances/{id}/image-uint8"): STUDENT,
    ("GET", "/instances/{id}/image-uint16"): STUDENT,
    ("GET", "/instances/{id}/numpy"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}"): STUDENT,
    # the viewer's stack document and lossless frame pixels (web/pixels.py)
    ("GET", "/pipacs/series/{id}/stack"): STUDENT,
    ("GET", "/pipacs/instances/{id}/frames/{frame}/pixels"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}/preview"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}/rendered"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}/image-uint8"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}/image-uint16"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}/numpy"): STUDENT,
    ("GET", "/instances/{id}/frames/{frame}/raw"): STUDENT,
    # tools
    ("POST", "/tools/find"): STUDENT,
    ("POST", "/tools/lookup"): STUDENT,
    ("GET", "/tools/labels"): STUDENT,
    ("GET", "/tools"): STUDENT,
    ("GET", "/tools/now"): STUDENT,
    ("GET", "/tools/now-local"): STUDENT,
    ("GET", "/tools/generate-uid"): STUDENT,
    ("GET", "/tools/dicom-conformance"): STUDENT,
    ("GET", "/tools/accepted-transfer-syntaxes"): STUDENT,
    ("GET", "/tools/unknown-sop-class-accepted"): STUDENT,
    ("GET", "/tools/default-encoding"): STUDENT,
    ("PUT", "/tools/default-encoding"): TEACHER,        # changes how every stored file reads
    ("POST", "/tools/dicom-echo"): TEACHER,             # reaches out to another node
    ("GET", "/plugins"): STUDENT,
    ("GET", "/plugins/{plugin}"): STUDENT,
    ("POST", "/tools/{kind}"): By("kind", {"create-archive": DOWNLOAD, "create-media": DOWNLOAD,
                                                 "create-media-extended": DOWNLOAD}),
    # what students may see
    ("GET", "/studies/{id}/released"): TEACHER,
    ("PUT", "/studies/{id}/released"): TEACHER,
    ("GET", "/pipacs/published-labels"): TEACHER,
    ("PUT", "/pipacs/published-labels/{label}"): TEACHER,
    ("DELETE", "/pipacs/published-labels/{label}"): TEACHER,
    ("GET", "/pipacs/upload-window"): TEACHER,
    # preparing today's class into the class cache (web/classprep.py): the teacher's
    ("POST", "/pipacs/class/prepare"): TEACHER,
    ("GET", "/pipacs/class/prepare"): TEACHER,
    ("DELETE", "/pipacs/class/prepare"): TEACHER,
    ("PUT", "/pipacs/upload-window"): TEACHER,
    ("DELETE", "/pipacs/upload-window"): TEACHER,
    # reaching out to other DICOM nodes: the teacher's alone
    ("GET", "/modalities"): TEACHER,
    ("GET", "/modalities/{name}"): TEACHER,
    ("PUT", "/modalities/{name}"): TEACHER,
    ("DELETE", "/modalities/{name}"): TEACHER,
    ("GET", "/modalities/{name}/configuration"): TEACHER,
    ("POST", "/modalities/{name}/echo"): TEACHER,
    ("POST", "/modalities/{name}/store"): TEACHER,
    ("POST", "/modalities/{name}/query"): TEACHER,
    ("POST", "/modalities/{name}/move"): TEACHER,
    ("GET", "/queries"): TEACHER,
    ("GET", "/queries/{qid}"): TEACHER,
    ("GET", "/queries/{qid}/{what}"): TEACHER,
    ("GET", "/queries/{qid}/answers"): TEACHER,
    ("GET", "/queries/{qid}/answers/{n}/content"): TEACHER,
    ("POST", "/queries/{qid}/answers/{n}/retrieve"): TEACHER,
    ("POST", "/queries/{qid}/retrieve"): TEACHER,
    # DICOMweb and WADO-URI: reading for students, STOW-RS for the teacher
    ("GET", "/dicom-web/studies"): STUDENT,
    ("POST", "/dicom-web/studies"): TEACHER,
    ("GET", "/dicom-web/series"): STUDENT,
    ("GET", "/dicom-web/instances"): STUDENT,
    ("GET", "/dicom-web/studies/{study}"): STUDENT,
    ("POST", "/dicom-web/studies/{study}"): TEACHER,
    ("GET", "/dicom-web/studies/{study}/metadata"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/instances"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/metadata"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/thumbnail"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/thumbnail"): STUDENT,
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}"): STUDENT,
    ("GET", "/wado"): STUDENT,
    # teaching cases (web/cases.py): students read the published ones, the teacher writes
    ("GET", "/cases"): STUDENT,
    ("POST", "/cases"): TEACHER,
    ("GET", "/cases/vocabulary"): STUDENT,
    ("GET", "/cases/{id}"): STUDENT,
    ("PUT", "/cases/{id}"): TEACHER,
    ("DELETE", "/cases/{id}"): TEACHER,
    ("POST", "/cases/{id}/publish"): TEACHER,
    ("POST", "/cases/{id}/unpublish"): TEACHER,
    ("POST", "/cases/{id}/anonymize"): TEACHER,      # web/casework.py: de-identify, move the case onto the copies
    # case bundles and key images for slides (web.casebundles; drafts are 404 to students there)
    ("GET", "/cases/{id}/key-images/{n}/rendered"): STUDENT,
    ("GET", "/cases/{id}/bundle"): DOWNLOAD,
    ("GET", "/collections/{label}/bundle"): DOWNLOAD,
    ("POST", "/cases/import"): TEACHER,
    # key images as DICOM (web/cases_dicom.py): files to download; storing them changes the archive
    ("GET", "/cases/{id}/key-object"): DOWNLOAD,
    ("GET", "/cases/{id}/presentation-states"): DOWNLOAD,
    ("POST", "/cases/{id}/store-key-objects"): TEACHER,
    # teaching sessions (web/teaching_sessions.py): the teacher makes and drives them; a student joins
    # with the code (a seat) and reads and answers only the session seated in (404 otherwise)
    ("GET", "/sessions"): TEACHER,
    ("POST", "/sessions"): TEACHER,
    ("POST", "/sessions/join"): ANYONE,            # the code is the teacher's invitation (throttled)
    ("GET", "/sessions/{id}"): STUDENT,            # a student: the student view of their own session
    ("PUT", "/sessions/{id}"): TEACHER,
    ("DELETE", "/sessions/{id}"): TEACHER,
    ("POST", "/sessions/{id}/start"): TEACHER,
    ("POST", "/sessions/{id}/pause"): TEACHER,
    ("POST", "/sessions/{id}/end"): TEACHER,
    ("POST", "/sessions/{id}/rerun"): TEACHER,
    ("POST", "/sessions/{id}/cases/{n}/reveal"): TEACHER,
    ("POST", "/sessions/{id}/cases/{n}/questions/{q}/ask"): TEACHER,
    ("POST", "/sessions/{id}/close-question"): TEACHER,
    ("POST", "/sessions/{id}/answers"): STUDENT,    # seated in it (cookie or X-Pipacs-Seat)
    ("GET", "/sessions/{id}/results"): TEACHER,
    ("GET", "/sessions/{id}/results.csv"): TEACHER,
    # the live channel of a teaching session (web/live.py): a student needs a seat in it (checked there)
    ("GET", "/sessions/{id}/live"): STUDENT,
    ("GET", "/pipacs/live-echo"): TEACHER,        # the live channel's floor (the bench signs in): 4 an address
}
