"""Presigned S3 GET URLs, signed here instead of through botocore's per-call machinery.

botocore's ``generate_presigned_url`` builds a whole request for every URL (event hooks, endpoint rules,
the operation's serializer): about 0.3 ms each, and a version's manifest hands out one per file. The
URL itself is SigV4 query-string signing of a GET on ``<endpoint>/<bucket>/<key>``
(https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html): a few HMACs.
:class:`GetPresigner` does only that, with the client's own endpoint, region and credentials.

It proves it writes botocore's exact URL before it is trusted: on first use it has botocore sign a
URL with and one without a download name, signs the same at the time botocore wrote into each
(their ``X-Amz-Date``), and falls back to botocore for good if either differs (another addressing
style, an endpoint rule, a botocore that words URLs otherwise). Every URL is signed afresh when it is
handed out, exactly as botocore's: valid for ``expires`` seconds from then; nothing is cached.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

log = logging.getLogger(__name__)

#: what SigV4 leaves unescaped in query keys and values (RFC 3986 unreserved characters)
_UNRESERVED = "-_.~"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _q(value: str) -> str:
    return quote(value, safe=_UNRESERVED)


@functools.lru_cache(maxsize=8)
def _signing_key(secret: str, day: str, region: str) -> bytes:
    """SigV4's derived key: the same for a day, a region and a secret (each request would otherwise redo 4 HMACs)."""
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class GetPresigner:
    """Presigned ``get_object`` URLs for one bucket of one botocore S3 client (path-style addressing)."""

    def __init__(self, client: Any, bucket: str):
        self._client = client
        self._bucket = bucket
        self._fast: bool | None = None  # None: not proven yet; True: signs here; False: botocore signs

    @property
    def signs_here(self) -> bool:
        """Whether URLs are signed by :meth:`sign` (proven equal to botocore's) rather than by botocore."""
        if self._fast is None:
            self._fast = self._proven()
        return self._fast

    def url(self, key: str, *, disposition: str | None, expires: int) -> str:
        """A URL that GETs ``key`` for ``expires`` seconds from now (with ``Content-Disposition: disposition``)."""
        if self.signs_here:
            return self.sign(key, disposition=disposition, expires=expires, now=datetime.now(UTC))
        return self.botocore_url(key, disposition=disposition, expires=expires)

    def botocore_url(self, key: str, *, disposition: str | None, expires: int) -> str:
        params = {"Bucket": self._bucket, "Key": key}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        return self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)

    def sign(self, key: str, *, disposition: str | None, expires: int, now: datetime) -> str:
        """The URL botocore would write at ``now`` (UTC)."""
        creds = self._client._request_signer._credentials.get_frozen_credentials()
        region = self._client.meta.region_name
        endpoint = urlsplit(self._client.meta.endpoint_url)
        host = endpoint.hostname or ""
        if endpoint.port is not None and endpoint.port != _DEFAULT_PORTS.get(endpoint.scheme):
            host = f"{host}:{endpoint.port}"
        path = quote(f"{endpoint.path.rstrip('/')}/{self._bucket}/{key}", safe="/~")
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        scope = f"{stamp[:8]}/{region}/s3/aws4_request"
        operation = [("response-content-disposition", disposition)] if disposition else []
        auth = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", f"{creds.access_key}/{scope}"),
                ("X-Amz-Date", stamp), ("X-Amz-Expires", str(int(expires))), ("X-Amz-SignedHeaders", "host")]
        if creds.token is not None:
            auth.append(("X-Amz-Security-Token", creds.token))
        encoded = [(_q(k), _q(v)) for k, v in operation + auth]
        canonical = "\n".join([
            "GET", path, "&".join(f"{k}={v}" for k, v in sorted(encoded)), f"host:{host}", "", "host", "UNSIGNED-PAYLOAD",
        ])
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(_signing_key(creds.secret_key, stamp[:8], region), to_sign.encode(), hashlib.sha256).hexdigest()
        query = "&".join(f"{k}={v}" for k, v in encoded)
        return f"{endpoint.scheme}://{endpoint.netloc}{path}?{query}&X-Amz-Signature={signature}"

    def _proven(self) -> bool:
        """Whether :meth:`sign` writes what botocore writes, with a download name and without."""
        key = "blobs/sha256/00/00/" + "0" * 64
        try:
            for disposition in ("attachment; filename=\"a b.json\"; filename*=UTF-8''a%20b.json", None):
                expected = self.botocore_url(key, disposition=disposition, expires=3600)
                stamp = parse_qs(urlsplit(expected).query)["X-Amz-Date"][0]
                now = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                if self.sign(key, disposition=disposition, expires=3600, now=now) != expected:
                    log.warning("S3 URLs are presigned by botocore: this client's URLs differ from SigV4 as signed "
                                "here (%s)", expected.split("?", 1)[0])
                    return False
        except Exception:  # an attribute botocore no longer has, no credentials yet: botocore signs
            log.warning("S3 URLs are presigned by botocore", exc_info=True)
            return False
        return True
