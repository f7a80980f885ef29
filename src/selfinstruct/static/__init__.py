"""The review page's files (HTML, CSS, JavaScript), served by `selfinstruct.review`."""
